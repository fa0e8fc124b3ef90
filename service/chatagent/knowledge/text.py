"""Language detection and the tokens shared by the hash embedder and the lexical index."""

from __future__ import annotations

import re

CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
WORD = re.compile(r"[a-z0-9]+")
EN_STOP = frozenset(
    "a an the is are was were be do does did i you we my your our to of in on for and or how what "
    "can could would should will with it me this that at by from as have has get".split()
)


def detect_lang(text: str) -> str:
    return "zh" if CJK.search(text) else "en"
