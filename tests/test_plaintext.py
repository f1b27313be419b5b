"""Untrusted text: invisible characters dropped, lengths capped, links that hide characters refused.

The oracle is the list of code points the hostile trial used and Unicode's own classes, written
out here by hand, not the categories plaintext.py reads."""

from __future__ import annotations

import unicodedata

import pytest

from digest.content.plaintext import TITLE_LIMIT, clean, excerpt, hides_characters, shorten

# Bidi embeddings and overrides (LRE RLE PDF LRO RLO), isolates (LRI RLI FSI PDI), marks (LRM RLM
# ALM), zero-width space / non-joiner / joiner, word joiner, BOM, soft hyphen, Mongolian vowel
# separator, invisible times, interlinear annotation anchor, a tag character.
INVISIBLE = [
    *(0x202A, 0x202B, 0x202C, 0x202D, 0x202E, 0x2066, 0x2067, 0x2068, 0x2069, 0x200E, 0x200F, 0x061C),
    *(0x200B, 0x200C, 0x200D, 0x2060, 0xFEFF, 0x00AD, 0x180E, 0x2062, 0xFFF9, 0xE0041),
]
BREAKING = [0x00, 0x07, 0x09, 0x0A, 0x0D, 0x1B, 0x7F, 0x85, 0x9B, 0x2028, 0x2029]


@pytest.mark.parametrize("cp", INVISIBLE, ids=hex)
def test_every_invisible_character_is_dropped_inside_a_word(cp):
    assert clean(f"pay{chr(cp)}pal") == "paypal"
    assert clean(f"{chr(cp)}Title{chr(cp)}") == "Title"


@pytest.mark.parametrize("cp", BREAKING, ids=hex)
def test_control_characters_and_line_breaks_become_one_space(cp):
    assert clean(f"one{chr(cp)}two") == "one two"
    assert clean(f"one {chr(cp)}{chr(cp)} two ") == "one two"


def test_a_reversed_title_reads_as_written():
    # "Invoice for <U+202E>gpj.exe": the override would show it as "Invoice for exe.jpg".
    assert clean("Invoice for \u202egpj.exe") == "Invoice for gpj.exe"
    assert clean("\u2067Admin\u2069 says hi") == "Admin says hi"


def test_a_zero_width_joiner_stays_only_inside_an_emoji():
    family, coder, flag = "👨\u200d👩\u200d👧", "👩🏽\u200d💻", "🏳\ufe0f\u200d🌈"
    assert clean(f"{family} {coder} {flag}") == f"{family} {coder} {flag}"
    assert clean("ad\u200dmin 👍\u200d and \u200d👍") == "admin 👍 and 👍"


def test_ordinary_text_is_untouched():
    for text in ("Déjà vu & caching", "東京の天気", "مرحبا بالعالم", "Ελληνικά", "a < b > c \"q\" 'x'", "x" * 5000):
        assert clean(text) is text or clean(text) == text


def test_nothing_invisible_survives_in_any_plane():
    """Every code point of the planes that hold characters other than CJK ideographs (0-2) and of
    the one with tags and variation selectors (14), in one string: what comes out is printable
    (or a space), apart from unassigned and private-use code points, which draw a box rather than
    nothing. (Planes 3-13 are ideographs or unassigned, 15-16 private use.)"""
    planes = [*range(0x30000), *range(0xE0000, 0xF0000)]
    every = "".join(chr(cp) for cp in planes if not 0xD800 <= cp <= 0xDFFF)
    out = clean(every)
    for ch in set(out):
        if ch != " " and not ch.isprintable():
            assert unicodedata.category(ch) in ("Co", "Cn"), hex(ord(ch))
    assert not {chr(cp) for cp in INVISIBLE + BREAKING} & set(out)


def test_lone_surrogates_are_dropped_so_the_text_can_be_encoded():
    assert clean("a\ud800b").encode("utf-8") == b"ab"


def test_shorten_cuts_at_a_word_with_an_ellipsis():
    title = "word " * 100_000  # 500 KB
    short = shorten(clean(title), TITLE_LIMIT)
    assert len(short) <= TITLE_LIMIT and short.endswith("word…")
    assert shorten("x" * 1000, 10) == "x" * 9 + "…"  # no space in reach: cut in the word
    assert shorten("short", TITLE_LIMIT) == "short"


def test_an_excerpt_without_spaces_is_cut_by_characters():
    assert len(excerpt("字" * 20_000, 60)) <= 60 * 16
    assert excerpt("one two three four", 2) == "one two…"
    assert excerpt("one two", 5) == "one two"


@pytest.mark.parametrize("url", [
    "https://blog.test/\u202eexe.txt",
    "https://blog.test/po\u200bst",
    "https://blog.test/post\u00ad",
    "https://blog.test/x%E2%80%AEy",  # U+202E, percent-encoded
    "https://blog.test/x%e2%80%8by",  # U+200B, lower-case escapes
    "https://blog.test/x?q=%EF%BB%BF",  # U+FEFF
    "https://blog.test/\x00x",
    "https://blog.test/a\u2028b",
])
def test_links_that_hide_characters(url):
    assert hides_characters(url)


@pytest.mark.parametrize("url", [
    "https://blog.test/2026/06/post.html",
    "https://blog.test/caf%C3%A9?q=a%20b&x=%0A",  # an é and an encoded newline show as written
    "https://blog.test/café",
    "https://例え.テスト/パス",
    "https://blog.test/100%",  # a stray % decodes to itself
])
def test_ordinary_links_are_kept(url):
    assert not hides_characters(url)
