"""Safe handling of model text: answer extraction, yes/no parsing, answer normalisation, time-limited calls.

Completions are hostile input. Every function here is linear in the text it reads (str.find / slicing, or a
regex without nested quantifiers on an input capped first), never evaluates it, and returns None/False
instead of raising.
"""
from __future__ import annotations

import re
import signal
import string
import threading
from typing import Any, Callable

MAX_COMPLETION_CHARS = 200_000  # far past any generation budget used here; longer text counts as no answer
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
_YES_NO_PREFIX = 64  # a yes/no verdict must appear at the very start; nothing past this is read
_YES_NO = re.compile(r"[\W_]*(yes|no)\b")  # one bounded run of non-word chars, then the word: no backtracking blowup
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def last_block(text: str, open_tag: str, close_tag: str) -> str | None:
    """Content of the last complete ``open_tag ... close_tag`` block, blocks taken left to right without
    overlap (the semantics of ``re.findall(r"<answer>(.*?)</answer>", text, re.DOTALL)[-1]``); None if there
    is none. Linear in len(text): each find starts where the previous block ended."""
    found, pos = None, 0
    while True:
        start = text.find(open_tag, pos)
        if start < 0:
            return found
        end = text.find(close_tag, start + len(open_tag))
        if end < 0:
            return found
        found = text[start + len(open_tag):end]
        pos = end + len(close_tag)


def last_tag_block(completion: Any, open_tag: str = ANSWER_OPEN, close_tag: str = ANSWER_CLOSE) -> str | None:
    """last_block of a completion; None if ``completion`` is not a string or is longer than MAX_COMPLETION_CHARS."""
    if not isinstance(completion, str) or len(completion) > MAX_COMPLETION_CHARS:
        return None
    return last_block(completion, open_tag, close_tag)


def extract_answer(completion: Any, max_chars: int) -> str | None:
    """The stripped last <answer> block, or None when there is none or it is longer than ``max_chars``
    (an over-long answer is rejected, not truncated: truncation could turn a wrong answer into a right one)."""
    answer = last_tag_block(completion)
    if answer is None:
        return None
    answer = answer.strip()
    return answer if len(answer) <= max_chars else None


def short_answer(completion: Any, max_chars: int) -> str | None:
    """A short free-form answer: the <answer> block if there is one, else the first non-empty line, stripped
    of surrounding space and one trailing period. None if empty or longer than ``max_chars``."""
    if not isinstance(completion, str) or len(completion) > MAX_COMPLETION_CHARS:
        return None
    tagged = last_tag_block(completion)
    if tagged is not None:
        text = tagged.strip()
    else:
        head = completion[: 4 * max_chars + 1024].lstrip()  # the first line lies in here if it is short enough
        text = head.split("\n", 1)[0].strip()
    if text.endswith("."):
        text = text[:-1].rstrip()
    return text if 0 < len(text) <= max_chars else None


def yes_no(completion: Any) -> bool | None:
    """True for a reply that starts with "yes", False for "no" (case-insensitive; leading spaces, quotes,
    asterisks and other punctuation skipped); None for anything else ("not sure", "Yesterday", "")."""
    if not isinstance(completion, str):
        return None
    if completion.lstrip().startswith(ANSWER_OPEN):  # "<answer>Yes</answer>" counts as "Yes"
        completion = completion.lstrip()[len(ANSWER_OPEN):]
    match = _YES_NO.match(completion[:_YES_NO_PREFIX].lower())
    if match is None:
        return None
    return match.group(1) == "yes"


def normalize(text: str) -> str:
    """SQuAD/TriviaQA-style answer normalisation: lowercase, drop punctuation and articles, squeeze spaces."""
    text = text.lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def matches_alias(answer: str | None, aliases: list[str]) -> bool:
    """True if the normalised answer equals a normalised alias or contains it as whole words
    ("the capital is paris" matches "Paris"; "parisian" does not)."""
    if not answer:
        return False
    padded = f" {normalize(answer)} "
    for alias in aliases:
        norm = normalize(alias)
        if norm and f" {norm} " in padded:
            return True
    return False


class _TimeLimit(BaseException):
    """Internal: the time limit of one call ran out. A BaseException, so a scorer's own ``except Exception``
    cannot swallow it."""


def time_limited(fn: Callable[..., Any], seconds: float, default: Any, *args: Any) -> Any:
    """``fn(*args)``, or ``default`` if it raises an Exception or runs longer than ``seconds``.

    The limit is a SIGALRM timer, so it applies only on the main thread of a process whose real-time timer is
    not in use (the regex engine and big-integer arithmetic check for signals, so both are interrupted);
    elsewhere ``fn`` runs without a limit and the callers' length caps are the only bound. The timer repeats
    every 50 ms after it first fires, so ``fn`` swallowing one interruption in a bare ``except:`` and running on
    is interrupted again (a loop that swallows every one cannot be stopped in-process).
    ``seconds <= 0`` disables the limit.
    """
    usable = (seconds > 0 and hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
              and signal.getitimer(signal.ITIMER_REAL)[0] == 0.0)
    if not usable:
        try:
            return fn(*args)
        except Exception:
            return default

    def _expire(signum, frame):
        raise _TimeLimit

    previous = signal.signal(signal.SIGALRM, _expire)
    try:
        signal.setitimer(signal.ITIMER_REAL, seconds, 0.05)
        try:
            return fn(*args)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except (_TimeLimit, Exception):
        return default
    finally:
        signal.signal(signal.SIGALRM, previous)


def last_boxed(completion: Any, max_chars: int) -> str | None:
    """Content of the last ``\\boxed{...}`` (balanced braces; ``\\{`` and ``\\}`` are literal), stripped; None if
    there is none, the last one is not closed, or its content is longer than ``max_chars``. Reads at most
    ``max_chars`` characters past the last ``\\boxed``."""
    if not isinstance(completion, str) or len(completion) > MAX_COMPLETION_CHARS:
        return None
    start = completion.rfind("\\boxed")
    if start < 0:
        return None
    pos = start + len("\\boxed")
    while pos < len(completion) and completion[pos] == " ":
        pos += 1
    if pos >= len(completion) or completion[pos] != "{":
        return None
    depth, i, end = 0, pos, min(len(completion), pos + max_chars + 2)
    while i < end:
        ch = completion[i]
        if ch == "\\":
            i += 2  # an escaped character (\{, \}, \\) never opens or closes a group
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                content = completion[pos + 1:i].strip()
                return content if len(content) <= max_chars else None
        i += 1
    return None


def last_code_block(completion: Any, max_chars: int) -> str | None:
    """The last complete Markdown fenced block (``` ... ```, fences paired left to right as in
    ``re.findall(r"```(.*?)```", text, re.DOTALL)[-1]``), without its info string (e.g. "python");
    None if there is none or the code is longer than ``max_chars``."""
    block = last_tag_block(completion, "```", "```")
    if block is None:
        return None
    first, newline, rest = block.partition("\n")
    if newline and (not first.strip() or first.strip().replace("_", "").replace("-", "").replace("+", "").isalnum()):
        block = rest  # drop the info string ("python", "py", "python3") or an empty first line
    return block if len(block) <= max_chars else None
