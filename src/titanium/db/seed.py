"""Rows the schema migrations insert, for the code that must know them too.

Frozen: blog revision 0002 inserts exactly these. A different seed needs a new
revision, never an edit here.
"""

# The old system's categories; inserted in this order they get ids 1, 2, 3 on
# both backends, which old clients rely on.
SEED_CATEGORIES = (
    {"name": "기술 스택", "slug": "tech-stack", "color": "#3b82f6"},
    {"name": "Troubleshooting", "slug": "troubleshooting", "color": "#ef4444"},
    {"name": "Test", "slug": "test", "color": "#10b981"},
)
