"""Prompt cleaning applied before T5 tokenization, re-implemented from its description.

The official pipeline runs the DeepFloyd-IF / PixArt caption cleaner twice on every prompt
(reference-vae-t5-infra.md §2.3). The rules were written for scraped web captions (URLs, HTML,
shop spam, product codes); they matter here because the T5 embeddings the DiT was trained on
came through them, so a prompt must be cleaned the same way to land in the same place.

Differences from the original, all confined to rare inputs:
- HTML is stripped with the standard library's HTMLParser (the original uses BeautifulSoup's
  html.parser backend, which wraps the same parser).
- ftfy is used when it is installed; otherwise `fix_text_basic` applies the parts of ftfy's
  defaults that matter for prompts (width folding, ligatures, curly quotes, control characters,
  NFC) but does not repair mojibake.
- URL rules delete whole URLs (scheme, "www." and bare domains with the listed endings).
"""

from __future__ import annotations

import html
import re
import unicodedata
import urllib.parse
from html.parser import HTMLParser

CLEANING_PASSES = 2  # the official text_preprocessing calls the cleaner twice

_DOMAIN_ENDINGS = r"(?:com|co|ru|net|org|edu|gov|it)"
_MEDIA_EXTENSIONS = r"(?:png|jpg|jpeg|bmp|webp|eps|pdf|apk|mp4)"

# CJK strokes, enclosed/compatibility CJK, unified ideographs (extension A and base), hexagrams.
_CJK = re.compile("[\u31c0-\u31ef\u31f0-\u31ff\u3200-\u32ff\u3300-\u33ff\u3400-\u4dbf\u4dc0-\u4dff\u4e00-\u9fff]+")

# Characters the cleaner treats as noise and turns into spaces.
_BAD_PUNCTUATION = re.compile(r"[#®•©™&@·º½¾¿¡§~()\[\]{}|\\/*]")


def _regex_rules(*rules: tuple[str, str]) -> list[tuple[re.Pattern[str], str]]:
    return [(re.compile(pattern), replacement) for pattern, replacement in rules]


# Web boilerplate removed before the punctuation pass (order matters: URLs before "/" becomes a space).
_WEB_NOISE = _regex_rules(
    (r"\b(?:https?|ftp)://\S*", ""),  # URL with a scheme
    (r"\bwww\.\S*", ""),  # URL starting with www.
    (rf"\b[a-z0-9.\-]+\.{_DOMAIN_ENDINGS}\b[\w/\-]*/?(?!@)", ""),  # bare domain with a path
)

_MARKUP_AND_IDS = _regex_rules(
    (r"&quot;?", ""),  # leftover entity fragments
    (r"&amp", ""),
    (r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}", " "),  # IPv4 address
    (r"\d:\d\d\s+$", ""),  # trailing article id like "3:45"
    (r"\\n", " "),  # a literal backslash-n left by scrapers
    (r"#\d{1,3}\b", ""),  # short hash tags "#12"
    (r"#\d{5,}\b", ""),  # long hash tags "#12345"
    (r"\b\d{6,}\b", ""),  # long bare numbers (ids, phone numbers)
    (rf"\S+\.{_MEDIA_EXTENSIONS}", ""),  # file names
    (r"[\"']{2,}", '"'),  # runs of quotes collapse to one double quote
    (r"\.{2,}", " "),  # ellipses
)

_SHOP_SPAM = _regex_rules(
    (r"\b[a-z]{1,3}\d{3,15}\b", ""),  # product codes: "jc1234"
    (r"\b[a-z]+\d+[a-z]+\b", ""),  # "ab12cd"
    (r"\b\d+[a-z]+\d+\b", ""),  # "12ab34"
    (r"(?:worldwide\s+)?(?:free\s+)?shipping", ""),
    (r"(?:free\s)?download(?:\sfree)?", ""),
    (r"\bclick\b\s(?:for|on)\s\w+", ""),
    (rf"\b{_MEDIA_EXTENSIONS}(?:\simages?)?", ""),
    (r"\bpage\s+\d+\b", ""),
    (r"\b\d*[a-z]+\d+[a-z]+\d+[a-z\d]*\b", " "),  # mixed codes: "j2d1a2a"
    (r"\b\d+\.?\d*[xх×]\d+\.?\d*\b", ""),  # dimensions "1920x1080" (latin x, cyrillic х, times sign)
)

_SPACING = _regex_rules(
    (r"\b\s+:\s+", ": "),
    (r"(\D[,./])\b", r"\1 "),  # a space after punctuation that is not inside a number
    (r"\s+", " "),
)


class _TextOnly(HTMLParser):
    """Collects the character data of an HTML fragment, entities decoded."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def strip_html(text: str) -> str:
    parser = _TextOnly()
    parser.feed(text)
    parser.close()
    return "".join(parser.parts)


_CURLY_TO_STRAIGHT = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'",
                                    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"'})
_LINE_BREAKS = re.compile("\r\n|[\r\u2028\u2029\x85]")
_TERMINAL_ESCAPES = re.compile("\x1b\\[[0-9;]*[A-Za-z]")


def _folds_to_plain(ch: str) -> bool:
    return "\uff01" <= ch <= "\uffee" or "\ufb00" <= ch <= "\ufb06" or ch == "\u3000"


def fix_text_basic(text: str) -> str:
    """The parts of ftfy.fix_text's defaults that can change a typed prompt (no mojibake repair)."""
    text = _TERMINAL_ESCAPES.sub("", text)
    # Full-width ASCII, half-width kana and latin ligatures fold to their plain forms, as ftfy does.
    text = "".join(unicodedata.normalize("NFKC", ch) if _folds_to_plain(ch) else ch for ch in text)
    text = text.translate(_CURLY_TO_STRAIGHT)
    text = _LINE_BREAKS.sub("\n", text)
    text = "".join(ch for ch in text if ch in "\t\n" or unicodedata.category(ch) != "Cc")
    return unicodedata.normalize("NFC", text)


def _find_ftfy():
    try:
        import ftfy  # the official cleaner's dependency; exact when installed
    except ImportError:
        return None
    return ftfy


_FTFY = _find_ftfy()


def _fix_text(text: str) -> str:
    return _FTFY.fix_text(text) if _FTFY is not None else fix_text_basic(text)


def _basic_clean(text: str) -> str:
    text = _fix_text(text)
    # Entities can be escaped twice in scraped captions ("&amp;amp;").
    return html.unescape(html.unescape(text)).strip()


def _apply(rules: list[tuple[re.Pattern[str], str]], text: str) -> str:
    for pattern, replacement in rules:
        text = pattern.sub(replacement, text)
    return text


def _unify_dashes_and_quotes(text: str) -> str:
    # Every Unicode dash (category Pd) becomes "-"; typographic quotes become ASCII quotes.
    text = "".join("-" if unicodedata.category(ch) == "Pd" else ch for ch in text)
    text = re.sub("[`´«»“”¨]", '"', text)
    return re.sub("[‘’]", "'", text)


def clean_caption_once(caption: str) -> str:
    """One pass of the caption cleaner; see the module docstring."""
    text = urllib.parse.unquote_plus(str(caption)).strip().lower()
    text = re.sub(r"<person>", "person", text)
    text = _apply(_WEB_NOISE, text)
    text = strip_html(text)
    text = re.sub(r"@[\w\d]+\b", "", text)  # @handles
    text = _CJK.sub("", text)
    text = _unify_dashes_and_quotes(text)
    text = _apply(_MARKUP_AND_IDS, text)
    text = _BAD_PUNCTUATION.sub(" ", text)
    text = re.sub(r"\s+\.\s+", " ", text)
    # Many dashes/underscores mean a slug ("red-car-on-road"): read it as words.
    if len(re.findall(r"[-_]", text)) > 3:
        text = re.sub(r"[-_]", " ", text)
    text = _basic_clean(text)
    text = _apply(_SHOP_SPAM, text)
    text = _apply(_SPACING, text).strip()
    text = re.sub(r"^[\"']([\w\W]+)[\"']$", r"\1", text)  # one wrapping pair of quotes
    text = re.sub(r"^['_,\-:;]", "", text)
    text = re.sub(r"['_,\-:+]$", "", text)
    text = re.sub(r"^\.\S+$", "", text)  # a lone ".word"
    return text.strip()


def clean_caption(caption: str, passes: int = CLEANING_PASSES) -> str:
    """The prompt as the official text encoder sees it: the cleaner applied `passes` times."""
    for _ in range(passes):
        caption = clean_caption_once(caption)
    return caption
