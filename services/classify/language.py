"""Language of a tweet whose source did not say (replayed text, some webhooks).

X gives ``lang`` on every tweet; only when it is missing do we detect it, with py3langid's
bundled model (no download). Short tweets are ambiguous, so a detection counts only when it is
confident; otherwise the language is ``und`` (undetermined), which the model is allowed to try.
"""

from __future__ import annotations

import re
from functools import cache

UNDETERMINED = "und"
# X's codes for a post with no words of a language: undetermined, media or links only (zxx),
# mentions only (qam), cashtags only (qct), hashtags only (qht), media links (qme), very short
# text (qst). The model may try those: they are not a language it was not trained for.
NO_LANGUAGE = frozenset({UNDETERMINED, "zxx", "qam", "qct", "qht", "qme", "qst"})
MIN_PROBABILITY = 0.9

_NOISE = re.compile(r"@\w+|https?://\S+|#\w+|\$[A-Za-z]{1,6}\b")


@cache
def _identifier():  # noqa: ANN202 - py3langid has no type hints
    from py3langid.langid import MODEL_DIR, MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_modelpath(MODEL_DIR / MODEL_FILE, norm_probs=True)


def detect(text: str) -> str:
    """ISO 639-1 code of the text's language, or ``und`` when unsure."""
    words = _NOISE.sub(" ", text).strip()
    if len(words) < 3:
        return UNDETERMINED
    lang, probability = _identifier().classify(words)
    return lang if probability >= MIN_PROBABILITY else UNDETERMINED
