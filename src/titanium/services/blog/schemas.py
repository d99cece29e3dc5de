"""Request and response bodies of blog-service."""

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from titanium.db.tables import CATEGORY_NAME_MAX, INTEGER_MAX, TITLE_MAX
from titanium.web.schemas import NoNul, NotBlank, UtcDatetime

Title = Annotated[str, StringConstraints(max_length=TITLE_MAX), NoNul, NotBlank]
Content = Annotated[str, StringConstraints(max_length=500_000), NoNul, NotBlank]
CategoryName = Annotated[str, StringConstraints(max_length=CATEGORY_NAME_MAX), NoNul, NotBlank]
CategoryId = Annotated[int, Field(ge=1, le=INTEGER_MAX)]


class _CategoryChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    category_name: CategoryName | None = None
    category_id: CategoryId | None = None

    @model_validator(mode="after")
    def _one_category(self) -> "_CategoryChoice":
        if self.category_name is not None and self.category_id is not None:
            raise ValueError("give category_name or category_id, not both")
        return self


class NewPost(_CategoryChoice):
    """A post to create; without a category it goes to the default one."""

    title: Title
    content: Content


class PostChanges(_CategoryChoice):
    """Fields to change on a post; absent fields stay as they are."""

    title: Title | None = None
    content: Content | None = None


class CategoryRef(BaseModel):
    """A post's category (with its colour, so a list can draw badges in one request)."""

    id: int
    name: str
    slug: str
    color: str


class Category(CategoryRef):
    """A category with its number of posts."""

    post_count: int


class PostSummary(BaseModel):
    """A post in a list, with an excerpt instead of the content."""

    id: int
    title: str
    author: str
    author_id: int | None = Field(description="The account that wrote it; null when unowned")
    created_at: UtcDatetime | None
    updated_at: UtcDatetime | None
    excerpt: str
    category: CategoryRef | None


class Post(BaseModel):
    """A whole post."""

    id: int
    title: str
    content: str
    author: str
    author_id: int | None = Field(description="The account that wrote it; null when unowned")
    created_at: UtcDatetime | None
    updated_at: UtcDatetime | None
    category: CategoryRef | None
