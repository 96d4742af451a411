"""Fine-tune throughput: the studio's worker (packed sequences) against the tutorial recipe, same run.

Baseline: transformers `Trainer` with every row padded to 512 tokens (`padding="max_length"`) and
`DataCollatorForLanguageModeling(mlm=False)`, the same LoRA settings through peft. Both learn every real token of
the same rows (the studio with `train_on_prompt`), for the same number of epochs, at the same learning rate. Prints
trained (non-padding) tokens per second of both, the ratio (target >= 3), and both final eval losses measured the
same way (mean loss per token over the held-out rows; target: the studio's is no worse).

    python bench/finetune.py                        # the offline starter model (SmolLM2-135M-Instruct)
    python bench/finetune.py --model PATH           # any local causal LM folder
    python bench/finetune.py --tiny                 # the tiny random LM: a quick smoke run
    python bench/finetune.py --method dpo           # DPO: the studio's run vs a bare TRL DPOTrainer (bench/dpo_trl.py)

In the same SFT run, the studio's loop is then measured against a bare TRL `SFTTrainer` with packing on the same rows
(target >= 0.95) by calling bench/sft_trl.py's `compare` and `report`: one run of each side, `--trl-steps` optimizer
steps (default 4; 0 skips it), each side in its own process. Few steps keep the added time to a few minutes on the
starter; `python bench/sft_trl.py --model starter --steps 8 --runs 2` gives steadier figures.

`--method dpo` runs bench/dpo_trl.py's comparison instead (see its docstring): the studio's DPO through the worker
on a real run folder against a bare `trl.DPOTrainer` (ref_model=None) on the same made-up pairs, the same LoRA,
steps, batch, max_length, beta and learning rate; default 6 steps of batch 2 at cutoff 128, 2 runs of each side
after one untimed warm-up run.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import dpo_trl  # noqa: E402  (bench/ is on sys.path when this file runs)
import sft_trl  # noqa: E402

from studio.training import rows as rowlib  # noqa: E402
from studio.training.datasets import load_dataset, split, write_jsonl  # noqa: E402
from studio.training.job import TrainJob, new_run_dir  # noqa: E402

PAD_TO = 512
SAMPLE = ROOT / "assets" / "datasets" / "studio-faq.jsonl"


def pick_model(args) -> Path:
    if args.model:
        return Path(args.model).expanduser().resolve()
    if args.tiny:
        from studio.models.tiny import build_all

        return build_all(Path(tempfile.gettempdir()) / "ml-studio-bench-tiny").causal_lm
    from studio.models.starter import ensure_starter

    return ensure_starter(ROOT / "studio-data" / "models")


def eval_loss(model, tokenizer, samples: list[dict], device: str) -> float:
    """Mean loss per predicted token over `samples`, each row alone (no padding): the same for both sides."""
    import torch

    rows = rowlib.tokenize(samples, tokenizer, PAD_TO, train_on_prompt=True)
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for row in rows:
            ids = torch.tensor([row.ids], device=device)
            n = len(row.ids) - 1
            total += float(model(input_ids=ids, labels=ids).loss) * n
            count += n
    return total / count


def run_studio(job: TrainJob, train, evals, workdir: Path) -> dict:
    run = new_run_dir(workdir, "studio")
    write_jsonl(run.train_file, train)
    write_jsonl(run.eval_file, evals)
    run.write_job(job)
    done = subprocess.run(
        [sys.executable, "-m", "studio.training.worker", str(run.path)], cwd=ROOT, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"studio worker failed:\n{done.stderr[-3000:]}")
    report = json.loads(run.report_file.read_text())
    report["adapter"] = run.adapter
    return report


def baseline(job: TrainJob, model_path: Path, train: list[dict], device: str, workdir: Path, batch: int):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, DataCollatorForLanguageModeling, Trainer, TrainingArguments

    from studio.training.job import default_targets

    tokenizer = rowlib.load_tokenizer(model_path)
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        # pad with a token the rows never contain, so the collator masks padding and nothing else
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.bos_token
    texts = [rowlib.render(s, tokenizer) + ("" if "messages" in s else tokenizer.eos_token) for s in train]
    encoded = tokenizer(texts, padding="max_length", max_length=PAD_TO, truncation=True)
    features = [
        {"input_ids": ids, "attention_mask": mask}
        for ids, mask in zip(encoded["input_ids"], encoded["attention_mask"], strict=True)
    ]
    real_tokens = sum(sum(f["attention_mask"]) for f in features)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(device)
    targets = list(default_targets(model.config.model_type))
    torch.manual_seed(job.seed)
    model = get_peft_model(
        model,
        LoraConfig(
            r=job.rank,
            lora_alpha=job.alpha,
            lora_dropout=job.dropout,
            target_modules="all-linear" if targets == ["all-linear"] else targets,
            task_type="CAUSAL_LM",
        ),
    )
    args = TrainingArguments(
        output_dir=str(workdir / "baseline"),
        per_device_train_batch_size=batch,
        num_train_epochs=job.epochs,
        learning_rate=job.learning_rate,
        lr_scheduler_type=job.scheduler,
        warmup_steps=job.warmup_ratio,  # a float below 1 is a share of the steps (transformers 5)
        max_grad_norm=job.max_grad_norm,
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        report_to=[],
        seed=job.seed,
        bf16=device == "cuda",
        use_cpu=device == "cpu",
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=features,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
    )
    t0 = time.perf_counter()
    out = trainer.train()
    seconds = time.perf_counter() - t0
    return model, tokenizer, real_tokens * job.epochs, seconds, out.global_step


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a local causal LM folder (default: the starter model)")
    parser.add_argument("--tiny", action="store_true", help="use the tiny random LM (quick smoke run)")
    parser.add_argument("--method", choices=("sft", "dpo"), default="sft", help="sft (default) or dpo")
    parser.add_argument("--data", help="SFT: a dataset file (default: the sample); DPO: a JSONL of pairs")
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument(
        "--baseline-batch",
        type=int,
        default=8,
        help="rows per step for the padded baseline (about what one packed block holds)",
    )
    parser.add_argument("--studio-batch", type=int, default=1, help="packed 512-token blocks per step (studio)")
    parser.add_argument(
        "--trl-steps", type=int, default=4, help="SFT: steps of the studio vs TRL SFTTrainer comparison (0: skip)"
    )
    dpo_trl.add_arguments(parser)
    args = parser.parse_args(argv)
    if args.method == "dpo":
        return run_dpo(args)
    if args.trl_steps and args.trl_steps < 3:
        parser.error(f"--trl-steps must be 0 or at least 3 (the rate is measured after step 1), not {args.trl_steps}")
    args.data = args.data or str(SAMPLE)
    import torch

    dpo_trl.resolve_device(args)
    device = args.device
    model_path = pick_model(args)
    samples = load_dataset(args.data).samples
    train, evals = split(samples, 0.1, 42)
    job = TrainJob(
        base_model=str(model_path),
        base_label=model_path.name,
        precision="bf16" if device == "cuda" else "fp32",
        device=device,
        learning_rate=args.lr,
        epochs=args.epochs,
        batch_size=args.studio_batch,
        cutoff_len=PAD_TO,
        packing=True,
        train_on_prompt=True,  # the baseline learns every real token too
        eval_every=0,
        save_every=0,
        train_rows=len(train),
        eval_rows=len(evals),
    )
    print(
        f"model {model_path.name} on {device}; {len(train)} train rows, {len(evals)} eval rows, {args.epochs:g} epochs"
    )
    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as tmp:
        work = Path(tmp)
        studio = run_studio(job, train, evals, work)
        model, tokenizer, base_tokens, base_seconds, base_steps = baseline(
            job, model_path, train, device, work, args.baseline_batch
        )
        base_eval = eval_loss(model, tokenizer, evals, device)
        del model
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        tuned = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(device), str(studio["adapter"])
        )
        studio_eval = eval_loss(tuned, tokenizer, evals, device)
    studio_rate = studio["train_tokens"] / studio["train_seconds"]
    base_rate = base_tokens / base_seconds
    print(
        f"studio (packed):        {studio_rate:8.1f} trained tokens/s  "
        f"({studio['train_tokens']} tokens, {studio['steps']} steps, {studio['train_seconds']:.1f} s)  "
        f"eval loss {studio_eval:.4f} (ppl {math.exp(studio_eval):.2f})"
    )
    print(
        f"Trainer (pad to {PAD_TO}):   {base_rate:8.1f} trained tokens/s  "
        f"({base_tokens} tokens, {base_steps} steps, {base_seconds:.1f} s)  "
        f"eval loss {base_eval:.4f} (ppl {math.exp(base_eval):.2f})"
    )
    ratio = studio_rate / base_rate
    print(
        f"ratio: {ratio:.2f}x (target >= 3)  eval loss: studio {studio_eval:.4f} vs Trainer {base_eval:.4f} "
        f"({'no worse' if studio_eval <= base_eval + 1e-3 else 'WORSE'})"
    )
    if args.trl_steps:
        print("SFT, the studio's loop vs a bare TRL SFTTrainer (bench/sft_trl.py):", flush=True)
        trl_args = argparse.Namespace(
            steps=args.trl_steps, runs=1, batch=1, cutoff=PAD_TO, device=device, data=args.data, threads=0
        )
        sft_trl.report(sft_trl.compare(model_path, samples, trl_args))
    return 0


def run_dpo(args) -> int:
    """`--method dpo`: bench/dpo_trl.py's comparison on the same model choice."""
    dpo_trl.resolve_device(args)
    model = args.model or ("tiny" if args.tiny else "starter")
    with tempfile.TemporaryDirectory(prefix="bench-dpo-") as tmp:
        found = dpo_trl.compare(dpo_trl.pick_model(model, Path(tmp)), args)
    dpo_trl.report(found)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
