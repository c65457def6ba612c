"""Incremental detokenization with stop strings.

Contract: feeding a sequence's output tokens one call at a time, the concatenation of the returned
text pieces equals `tokenizer.decode(output_ids, skip_special_tokens=True)` (truncated before the
first stop string, when one matches). A character whose UTF-8 bytes span several byte-level BPE
tokens is emitted only once complete (the decoded tail ends in U+FFFD until then), as vLLM and HF's
TextStreamer do. Text that could still turn into a stop string is held back until it cannot.
"""

from __future__ import annotations

_REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """Turns a growing list of output token ids into text pieces; finds stop strings."""

    def __init__(self, tokenizer, stop: tuple[str, ...] = ()):
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self._holdback = max((len(s) for s in self.stop), default=1) - 1
        self.prefix_offset = 0  # tokens before this are already final text
        self.read_offset = 0  # tokens before this have been turned into text
        self.text = ""  # all text decoded so far (before the stop string, once stopped)
        self.emitted = 0  # characters of self.text already returned
        self.stopped = False

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _new_text(self, ids: list[int]) -> str:
        """Text of ids[read_offset:], or "" while the tail is an incomplete character."""
        prefix = self._decode(ids[self.prefix_offset:self.read_offset])
        full = self._decode(ids[self.prefix_offset:])
        if len(full) <= len(prefix) or full.endswith(_REPLACEMENT):
            return ""
        self.prefix_offset, self.read_offset = self.read_offset, len(ids)
        return full[len(prefix):]

    def update(self, output_ids: list[int], final: bool = False) -> str:
        """Add the newest tokens of output_ids; return the text that is now safe to emit.

        final=True flushes held-back text (the sequence ended for another reason).
        """
        if self.stopped:
            return ""
        self.text += self._new_text(output_ids)
        if self._find_stop():
            final = True
        end = len(self.text) if final else max(len(self.text) - self._holdback, self.emitted)
        piece = self.text[self.emitted:end]
        self.emitted = end
        return piece

    def flush(self, output_ids: list[int]) -> str:
        """Everything not emitted yet, including an incomplete trailing character (as decode gives it)."""
        if self.stopped:
            return ""
        tail = self._decode(output_ids[self.prefix_offset:])
        done = self._decode(output_ids[self.prefix_offset:self.read_offset])
        self.read_offset = len(output_ids)
        self.text += tail[len(done):]
        self._find_stop()
        piece = self.text[self.emitted:]
        self.emitted = len(self.text)
        return piece

    def _find_stop(self) -> bool:
        """Truncate text before the earliest stop string; True when one matched."""
        if not self.stop:
            return False
        # A match cannot start in emitted text: it would have been complete, and found, back then.
        hits = [i for i in (self.text.find(s, self.emitted) for s in self.stop) if i >= 0]
        if not hits:
            return False
        self.text = self.text[:min(hits)]
        self.stopped = True
        return True
