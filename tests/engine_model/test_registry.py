"""Every architecture of transformers' causal-LM registry either runs on the generic path exactly or is refused at
load time with a message naming it and why; none crashes or hangs (each gets PER_ARCH_S seconds).

For each model_type a tiny random-weight fp32 checkpoint is written (muxserve.tiny) and transformers' own forward
is run on it. Where that cannot be done offline (multimodal wrappers whose vision towers stay large, configs that
validate sizes this cannot shrink, missing optional packages), the architecture is listed in NOT_BUILT with the
reason, and the test asserts that exactly those could not be built, so the list cannot drift silently.
A built one is loaded through the engine's loader: refused (UnsupportedModelError naming the architecture and the
reason), or it must give transformers' greedy tokens and logits within 1e-3 at prefill and decode.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager

import torch

from muxserve.tiny import causal_lm_types, write_tiny_checkpoint
from services.worker.engine.loader import read_spec
from services.worker.engine.types import UnsupportedModelError
from tests.engine_model.helpers import Driver, hf_last_logits

PER_ARCH_S = 60
PROMPT, NEW = [5, 17, 99, 3, 250, 7], 4
NOT_BUILT = {  # model_type -> why no tiny checkpoint is written here
    **{t: "a multimodal wrapper whose vision/audio tower stays large in a default config"
       for t in ("blt", "fuyu", "gemma3", "gemma4", "gemma4_unified", "gemma4_unified_assistant", "git", "got_ocr2",
                 "mllama", "moss_transcribe_diarize", "phi4_multimodal", "gemma3n", "gemma4_text")},
    **{t: "its config keeps the text model's sizes in a sub-config this does not shrink"
       for t in ("dots3_note", "emu3", "llama4", "qwen3_5", "qwen3_5_moe", "qwen4_exp", "dbrx", "musicgen",
                 "musicgen_melody")},
    **{t: "its config validates sizes or layer lists that a 2-layer, 64-wide config does not meet"
       for t in ("cohere_compass_text", "dots3_note_text", "gemma3n_text", "gemma4_assistant", "gpt_neo",
                 "inkling2_loop_text", "inkling2_text", "lfm2_moe", "mamba2", "plbart", "prophetnet", "reformer",
                 "whisper", "xlnet", "zamba", "zamba2", "zaya", "blenderbot")},
    "longcat_flash": "transformers' own forward fails on the small config's latent-attention head sizes",
    "xmod": "transformers' forward needs a language set on the model first (set_default_language)",
}


class _Timeout(Exception):
    pass


@contextmanager
def time_bound(seconds: int):
    def fire(*_):
        raise _Timeout(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _write(model_type: str, root):
    try:
        return write_tiny_checkpoint(root / model_type, model_type, seed=1), ""
    except Exception as e:  # noqa: BLE001 - any failure to build is reported, then matched against NOT_BUILT
        return None, f"{type(e).__name__}: {e}"


def _reference(path):
    """transformers' model of the checkpoint, or (None, why) when transformers itself cannot run it here."""
    from transformers import AutoModelForCausalLM

    try:
        hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        with torch.no_grad():
            hf(torch.tensor([PROMPT]))
    except Exception as e:  # noqa: BLE001 - any failure to build is reported, then matched against NOT_BUILT
        return None, f"{type(e).__name__}: {e}"
    return hf, ""


def _run(path, hf) -> str:
    """"pass" or what differed; raises UnsupportedModelError where the loader refuses the architecture."""
    d = Driver(path, seed=1)
    d.add(0, list(PROMPT))
    first = d.step({0: len(PROMPT)})
    for _ in range(NEW - 1):
        last = d.step({0: 1})
    seq = d.seqs[0]
    with torch.no_grad():
        ref = hf.generate(torch.tensor([PROMPT]), max_new_tokens=NEW, do_sample=False, eos_token_id=None,
                          pad_token_id=0)[0, len(PROMPT):].tolist()
    diffs = [(first.logits[0] - hf_last_logits(hf, PROMPT)).abs().max().item(),
             (last.logits[0] - hf_last_logits(hf, seq.tokens[:seq.computed])).abs().max().item()]
    if seq.tokens[len(PROMPT):] != ref or max(diffs) >= 1e-3:
        return f"tokens {seq.tokens[len(PROMPT):]} vs {ref}, logit diffs {diffs}"
    return "pass"


def _case(model_type: str, root) -> tuple[str, str]:
    try:
        with time_bound(PER_ARCH_S):
            path, why = _write(model_type, root)
            if path is None:
                return "not built", why
            try:
                read_spec(path)  # a refusal from the config alone needs no reference
                hf, why = _reference(path)
                if hf is None:
                    return "not built", why
                return ("pass", "") if (got := _run(path, hf)) == "pass" else ("wrong", got)
            except UnsupportedModelError as e:
                return "refused", str(e)
    except _Timeout as e:
        return "hang", str(e)
    except Exception as e:  # noqa: BLE001 - a crash is what this test is about
        return "crash", f"{type(e).__name__}: {e}"


def test_every_registry_architecture_runs_exactly_or_is_refused(tmp_path):
    types = causal_lm_types()
    results = {t: _case(t, tmp_path) for t in types}
    bad = {t: r for t, r in results.items() if r[0] in ("wrong", "hang", "crash")}
    assert not bad, f"neither exact nor refused: {bad}"
    for t, (status, why) in results.items():
        if status == "refused":
            arch = repr((__import__("json").loads((tmp_path / t / "config.json").read_text())["architectures"])[0])
            assert arch in why and "not supported" in why and len(why.split("supported", 1)[1]) > 20, (t, why)
    not_built = {t for t, r in results.items() if r[0] == "not built"}
    assert not_built == set(NOT_BUILT) & set(types), "\n".join(f"{t}: {results[t]}" for t in not_built ^ set(NOT_BUILT))
    passed = sorted(t for t, r in results.items() if r[0] == "pass")
    assert len(passed) >= 60, passed
    print(f"\n{len(passed)} pass, {sum(r[0] == 'refused' for r in results.values())} refused, "
          f"{len(not_built)} not built of {len(types)}")
