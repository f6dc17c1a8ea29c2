"""The optional prompt-injection classifier: an ONNX model and its tokenizer, both provided by the administrator.

The rules of dlp/injection.py are explainable and cheap, but they only see the phrasings someone wrote down; a
fine-tuned classifier generalises to paraphrases and languages no rule names, at a cost (milliseconds per window of
tokens, false positives no administrator can fix by editing a file). So it is an option: a `classifier:` section
in rules/injection.yaml names the model and the tokenizer; nothing is ever downloaded. It needs the `classifier`
extra (onnxruntime, tokenizers), imported only when a section is configured, so a gateway without it is unchanged.

The section travels with the injection rules, so it reaches the DLP workers (which run the model, never the
proxy's event loop) and is hot-reloaded with them, and every mistake is a RulesError naming file and line. The
rules stage opens the model once to check it when it loads or reloads the rules, in its thread (and drops it: the
proxy never keeps a model it does not run); the scanners' copies of the rules do not open it again
(`load_rules(check_model=False)`), and each worker opens its own when it warms up.

The model contract is the one of a sequence-classification model exported from Hugging Face: inputs `input_ids`
and optionally `attention_mask` and `token_type_ids` (int64 or int32, shape [batch, tokens]); its first output
[batch, labels] is logits (softmaxed here) or probabilities; `label` is the index of the injection label. A text
is cut into windows of `max_tokens` tokens overlapping by `stride` (the tokenizer's own truncation, special tokens
added per window), at most `max_windows` of them (bounded work: the rules still read the whole text); each
window is scored on its own, one model run of batch 1, so no padding can change a model without an attention mask.

Nothing here imports mitmproxy.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.rulesfile import RulesError, check_keys, number
from dlp.injection import STAGES

INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OUTPUTS = ("logits", "probabilities")
EXTRA = "pip install 'ai-egress-gateway[classifier]'"
#: Characters tokenized per token the windows can hold: tokenizing costs about 0.15 ms per KB, so only the start
#: of a text the scored windows can reach is tokenized (a subword token is about 4 characters of prose; 8 leaves
#: room for code and long words).
CHARS_PER_TOKEN = 8


@dataclass(frozen=True, slots=True)
class ClassifierSpec:
    """The `classifier:` section of rules/injection.yaml, checked; `lines` keeps each key's line for errors."""

    file: Path
    model: Path
    tokenizer: Path
    threshold: float = 0.8  # a window's probability at or above which it is reported
    max_tokens: int = 512
    stride: int = 64
    max_windows: int = 8
    label: int = 1
    outputs: str = "logits"
    stage: str = "stable"
    line: int = 0
    lines: dict[str, int] = field(default_factory=dict, compare=False)

    def error(self, key: str, message: str) -> RulesError:
        return RulesError(self.file, self.lines.get(key, self.line), f"classifier: {message}")


@dataclass(frozen=True, slots=True)
class Window:
    """A scored stretch of a text: characters [start, end) and the model's probability of injection."""

    start: int
    end: int
    score: float


_KEYS = {"threshold", "max_tokens", "stride", "max_windows", "label", "outputs", "stage"}


def parse(file: Path, m: Any) -> ClassifierSpec:
    """The section, checked for shape (types, ranges, files that exist); `Classifier.load` checks the model."""
    m = check_keys(file, m, "classifier", {"model", "tokenizer"}, _KEYS)
    lines = {key: m.line_of(key) for key in m}
    paths = {}
    for key in ("model", "tokenizer"):
        value = m[key]
        if not isinstance(value, str) or not value:
            raise RulesError(file, lines[key], f"classifier: {key} must be a file's path")
        path = Path(value).expanduser()
        if not path.is_absolute():  # the workers read a copy of this file from another folder (addons/inspect.py)
            raise RulesError(file, lines[key], f"classifier: {key} must be an absolute path, not {value!r}")
        if not path.is_file():
            raise RulesError(file, lines[key], f"classifier: {key} {value!r} is not a file (the gateway never "
                                               "downloads models: put it there, or remove the classifier section)")
        paths[key] = path
    spec = ClassifierSpec(file, paths["model"], paths["tokenizer"], line=m.line, lines=lines)
    values: dict[str, Any] = {}
    for key, lo, hi in (("max_tokens", 8, 8192), ("stride", 0, 4096), ("max_windows", 1, 1024), ("label", 0, 1023)):
        if key in m:
            values[key] = number(file, m, key, lo, hi, "classifier", integer=True)
    if "threshold" in m:  # above 0: at 0 every window would be reported
        values["threshold"] = float(number(file, m, "threshold", 0, 1, "classifier", above=True))
    for key, allowed in (("outputs", OUTPUTS), ("stage", STAGES)):
        if key in m:
            if m[key] not in allowed:
                raise spec.error(key, f"{key} must be one of {', '.join(allowed)}, not {m[key]!r}")
            values[key] = m[key]
    spec = dataclasses.replace(spec, **values)
    if spec.stride * 2 > spec.max_tokens:
        raise spec.error("stride" if "stride" in m else "max_tokens", "stride must be at most half of max_tokens")
    return spec


class Classifier:
    """The loaded model and tokenizer of a spec; `windows(text)` scores a text. One per worker process."""

    def __init__(self, spec: ClassifierSpec, session: Any, tokenizer: Any, feeds: dict[str, Any]):
        """`session`: an onnxruntime.InferenceSession, `tokenizer` a tokenizers.Tokenizer (typed Any: both are
        imported only when a classifier is configured)."""
        self.spec, self._session, self._tokenizer = spec, session, tokenizer
        self._feeds = feeds  # model input name -> numpy dtype
        self._output = session.get_outputs()[0].name

    @classmethod
    def load(cls, spec: ClassifierSpec) -> Classifier:
        """Open and check the tokenizer and the model (a trial run on a short text); a RulesError names the key's
        line when onnxruntime or tokenizers is not installed, a file does not load, or the model's inputs and
        outputs are not the contract's (module docstring)."""
        try:
            import numpy
            import onnxruntime
            import tokenizers
        except ImportError as e:
            raise spec.error("model", f"needs the classifier extra ({EXTRA}): {e.name} is not installed") from None
        try:
            tokenizer = tokenizers.Tokenizer.from_file(str(spec.tokenizer))
        except Exception as e:  # tokenizers raises a bare Exception for a file it cannot read
            raise spec.error("tokenizer", f"{spec.tokenizer} is not a tokenizers tokenizer.json: {e}") from None
        tokenizer.no_padding()
        tokenizer.enable_truncation(spec.max_tokens, stride=spec.stride)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1  # a worker is one process on one core
        options.log_severity_level = 3
        try:
            session = onnxruntime.InferenceSession(str(spec.model), options, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise spec.error("model", f"{spec.model} does not load as an ONNX model: {e}") from None
        dtypes = {"tensor(int64)": numpy.int64, "tensor(int32)": numpy.int32}
        feeds = {}
        for i in session.get_inputs():
            if i.name not in INPUTS or i.type not in dtypes:
                raise spec.error("model", f"{spec.model}: input {i.name!r} ({i.type}) is not one the classifier "
                                          f"feeds ({', '.join(INPUTS)}, int64 or int32)")
            feeds[i.name] = dtypes[i.type]
        if "input_ids" not in feeds:
            raise spec.error("model", f"{spec.model}: the model has no input_ids input")
        out = session.get_outputs()[0]
        if out.shape is not None and len(out.shape) != 2:
            raise spec.error("model", f"{spec.model}: output {out.name!r} has shape {out.shape}, not "
                                      "[batch, labels]")
        classifier = cls(spec, session, tokenizer, feeds)
        try:
            row = classifier._run(tokenizer.encode("Hello, how are you?"))
        except Exception as e:
            raise spec.error("model", f"{spec.model} does not run on the tokenizer's output: {e}") from None
        if spec.label >= len(row):
            raise spec.error("label", f"label {spec.label} is not an index of the model's {len(row)} outputs")
        if spec.outputs == "logits" and len(row) < 2:  # a softmax of one logit is 1.0: every text would be flagged
            raise spec.error("outputs", "a softmax of one output is always 1, so every text would be flagged: "
                                        "give a model with an output per label, or one whose output is the "
                                        "probability (`outputs: probabilities`)")
        return classifier

    def windows(self, text: str) -> list[Window]:
        """Each window of the text with its probability of injection (at most max_windows, from the start)."""
        if not text.strip():
            return []
        first = self._tokenizer.encode(text[:self.spec.max_windows * self.spec.max_tokens * CHARS_PER_TOKEN])
        out = []
        for encoding in [first, *first.overflowing][:self.spec.max_windows]:
            spans = [o for o, special in zip(encoding.offsets, encoding.special_tokens_mask) if not special]
            if not spans:
                continue
            out.append(Window(spans[0][0], spans[-1][1], self._probability(self._run(encoding))))
        return out

    def _run(self, encoding: Any) -> list[float]:
        """The model's output row for one tokenizers.Encoding."""
        import numpy

        values = {"input_ids": encoding.ids, "attention_mask": encoding.attention_mask,
                  "token_type_ids": encoding.type_ids}
        inputs = {name: numpy.asarray([values[name]], dtype=dtype) for name, dtype in self._feeds.items()}
        return [float(v) for v in self._session.run([self._output], inputs)[0][0]]

    def _probability(self, row: list[float]) -> float:
        """The injection label's probability: softmax of logits, or the model's own probability."""
        if self.spec.outputs == "probabilities":
            return min(1.0, max(0.0, row[self.spec.label]))
        top = max(row)
        exps = [math.exp(v - top) for v in row]
        return exps[self.spec.label] / sum(exps)
