"""Usernames compared the way an identity system must: one key per look-alike group.

`username_key` turns what someone typed into the key that uniqueness and
look-ups compare (decision 43 in docs/decisions.md):

1. NFKC, so that compatibility forms fold: fullwidth letters (U+FF41...),
   ligatures (U+FB01 fi), mathematical letters (U+1D41A bold a) all become
   plain letters.
2. The PRECIS profile UsernameCaseMapped (RFC 8265), with Unicode case folding
   (precis-i18n's `UsernameCaseMapped:CaseFold`): width mapping, case folding
   (`Alice` and `ALICE` are `alice`, `ß` is `ss`), NFC (both forms of `rené`
   agree), and the IdentifierClass: letters, digits and printable ASCII only;
   spaces, controls, non-ASCII symbols and punctuation, unassigned code points,
   and ZWJ/ZWNJ outside the scripts that need them are refused; so is a
   right-to-left name that breaks the bidi rule.
3. One script (UTS #39 "highly restrictive"): Common and Inherited characters
   (digits, `_ . -`, combining marks) go with any script, and Latin may be
   mixed with Han and Japanese kana, Han and Bopomofo, or Han and Hangul.
   Everything else mixed, such as a Cyrillic a (U+0430) in a Latin name, is refused.
4. The key must fit the column (USERNAME_MAX characters): folding can make a
   name longer (`ß` is two characters in the key).

The result is stable: the key of a key is the key itself. What is not covered:
confusables within one script (`I` and `l`, `rn` and `m`) and whole names in
another script that look Latin (all-Cyrillic U+0430 U+0440 U+0435 reads
"ape"); no maintained library gives UTS #39 skeletons cheaply, and a
whole-script check from the homoglyph tables refuses ordinary Russian names.
"""

import unicodedata
from collections.abc import Collection, Iterable

from confusable_homoglyphs import categories  # type: ignore[import-untyped]
from precis_i18n import get_profile

from titanium.db.tables import USERNAME_MAX
from titanium.errors import InvalidInput

_PROFILE = get_profile("UsernameCaseMapped:CaseFold")
# Script_Extensions-free stand-ins for UTS #39 section 5.2 "highly restrictive".
_NEUTRAL = frozenset({"COMMON", "INHERITED"})
_ALLOWED_MIXES = (
    frozenset({"LATIN", "HAN", "HIRAGANA", "KATAKANA"}),
    frozenset({"LATIN", "HAN", "BOPOMOFO"}),
    frozenset({"LATIN", "HAN", "HANGUL"}),
)


class BadUsername(InvalidInput):
    """A username the policy refuses (answered as a 422 on the `username` field)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, field="username")


def _describe(char: str) -> str:
    return f"U+{ord(char):04X} {unicodedata.name(char, 'unnamed character')}"


def _scripts(key: str) -> set[str]:
    return {categories.alias(char) for char in key} - _NEUTRAL


def username_key(name: str) -> str:
    """The comparison key of a username; BadUsername when the policy refuses it."""
    folded = unicodedata.normalize("NFKC", name)
    try:
        key: str = _PROFILE.enforce(folded)
    except UnicodeEncodeError as exc:
        reason = exc.reason.split("/")[-1].replace("_", " ")
        if exc.end > exc.start:
            raise BadUsername(
                f"username contains a character that is not allowed: "
                f"{_describe(folded[exc.start])} ({reason})"
            ) from None
        raise BadUsername(f"username is not allowed ({reason})") from None
    scripts = _scripts(key)
    if len(scripts) > 1 and not any(scripts <= mix for mix in _ALLOWED_MIXES):
        names = ", ".join(sorted(script.title() for script in scripts))
        raise BadUsername(f"username mixes scripts ({names}): write it in one script")
    if len(key) > USERNAME_MAX:
        raise BadUsername(
            f"username is {len(key)} characters once normalised, more than {USERNAME_MAX}"
        )
    return key


def key_or_none(name: str) -> str | None:
    """The key of a username, or None when the policy refuses it."""
    try:
        return username_key(name)
    except BadUsername:
        return None


def assign_keys(
    accounts: Iterable[tuple[int, str]], taken: Collection[str] = ()
) -> dict[int, str | None]:
    """Keys for existing accounts `(id, username)`: the rule for rows that predate keys.

    In id order, the oldest account of each look-alike group gets the key;
    later ones, and names the policy refuses, get None (they keep logging in
    by their exact spelling). Keys in `taken` already belong to someone else.
    """
    assigned: dict[int, str | None] = {}
    used = set(taken)
    for user_id, username in sorted(accounts):
        key = key_or_none(username)
        if key is None or key in used:
            assigned[user_id] = None
        else:
            assigned[user_id] = key
            used.add(key)
    return assigned
