"""Character-level GPT trained on Tiny Shakespeare, with checkpoints that survive timeouts and preemption.

Runs as a Crucible job (`main()` returns the final metrics) or on its own (`python main.py --config gpu`).
Pick a configuration with NANOGPT_CONFIG (tiny | cpu | gpu); NANOGPT_MAX_ITERS overrides the length.
Checkpoints go to CRUCIBLE_CHECKPOINT_DIR (default /workspace/checkpoints) every `checkpoint_interval`
iterations and when SIGTERM arrives; a run that finds a checkpoint resumes from it with the same data
order and dropout masks, so the loss curve continues exactly where it stopped.
"""

from __future__ import annotations

import csv
import gzip
import json
import math
import os
import random
import signal
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn as nn
from torch.nn import functional as F

HERE = Path(__file__).resolve().parent

try:  # inside a Crucible image the runner's helper reports progress; elsewhere speak its protocol directly
    from crucible import progress
except ImportError:  # pragma: no cover - exercised outside the job images

    def progress(step=None, total=None, **metrics):
        line = {k: v for k, v in {"step": step, "total": total, **metrics}.items() if v is not None}
        print("##crucible:progress " + json.dumps(line), flush=True)


@dataclass(frozen=True)
class Config:
    n_layer: int
    n_head: int
    n_embd: int
    block_size: int
    batch_size: int
    dropout: float
    learning_rate: float
    min_lr: float
    max_iters: int
    warmup_iters: int
    eval_interval: int
    eval_iters: int
    checkpoint_interval: int
    weight_decay: float = 0.1
    beta2: float = 0.99
    grad_clip: float = 1.0
    seed: int = 1337
    compile: bool = False


CONFIGS = {
    # Seconds on two CPU cores; what the tests run.
    "tiny": Config(
        n_layer=2, n_head=2, n_embd=64, block_size=64, batch_size=16, dropout=0.0,
        learning_rate=2e-3, min_lr=2e-4, max_iters=300, warmup_iters=20, eval_interval=100,
        eval_iters=20, checkpoint_interval=50,
    ),
    "cpu": Config(
        n_layer=4, n_head=4, n_embd=128, block_size=128, batch_size=32, dropout=0.1,
        learning_rate=1e-3, min_lr=1e-4, max_iters=2000, warmup_iters=100, eval_interval=250,
        eval_iters=50, checkpoint_interval=250,
    ),
    # The classic character-level setup: 6 layers, 6 heads, 384 dims, block 256, batch 64.
    "gpu": Config(
        n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=64, dropout=0.2,
        learning_rate=1e-3, min_lr=1e-4, max_iters=5000, warmup_iters=100, eval_interval=250,
        eval_iters=200, checkpoint_interval=500, compile=True,
    ),
}


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=False)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)
        self.dropout = cfg.dropout
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        # Fused (flash) attention where the backend has it.
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )
        return self.resid_drop(self.proj(y.transpose(1, 2).contiguous().view(b, t, c)))


class Block(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.n_embd, bias=False)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.n_embd, bias=False)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=False),
            nn.GELU(),
            nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=False),
            nn.Dropout(cfg.dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, cfg: Config, vocab_size: int):
        super().__init__()
        self.block_size = cfg.block_size
        self.tok = nn.Embedding(vocab_size, cfg.n_embd)
        self.pos = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=False)
        self.head = nn.Linear(cfg.n_embd, vocab_size, bias=False)
        self.tok.weight = self.head.weight  # weight tying
        self.apply(self._init)
        for name, p in self.named_parameters():
            if name.endswith("mlp.2.weight") or name.endswith("attn.proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        t = idx.shape[1]
        x = self.drop(self.tok(idx) + self.pos(torch.arange(t, device=idx.device)))
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln_f(x))
        if targets is None:
            return logits, None
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, new_tokens: int, generator: torch.Generator) -> torch.Tensor:
        for _ in range(new_tokens):
            logits, _ = self(idx[:, -self.block_size :])
            probs = F.softmax(logits[:, -1, :] / 0.8, dim=-1)
            idx = torch.cat((idx, torch.multinomial(probs, 1, generator=generator)), dim=1)
        return idx


def load_text() -> str:
    with gzip.open(HERE / "data" / "tinyshakespeare.txt.gz", "rt", encoding="utf-8") as f:
        return f.read()


def lr_at(it: int, cfg: Config) -> float:
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / cfg.warmup_iters
    ratio = min(1.0, (it - cfg.warmup_iters) / max(1, cfg.max_iters - cfg.warmup_iters))
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.learning_rate - cfg.min_lr)


def batch(data: torch.Tensor, cfg: Config, gen: torch.Generator, device: str):
    ix = torch.randint(len(data) - cfg.block_size - 1, (cfg.batch_size,), generator=gen)
    x = torch.stack([data[i : i + cfg.block_size] for i in ix])
    y = torch.stack([data[i + 1 : i + 1 + cfg.block_size] for i in ix])
    if device == "cuda":
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x, y


class Checkpoints:
    """The latest checkpoint, written atomically: a kill mid-write leaves the previous one intact."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.latest = directory / "latest.pt"

    def load(self, device: str):
        if not self.latest.exists():
            return None
        return torch.load(self.latest, map_location=device, weights_only=False)

    def save(self, state: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".latest.pt.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.latest)


class Tracker:
    """Metrics to CSV under the workspace, and to MLflow when a tracking server is configured."""

    def __init__(self, directory: Path, cfg: Config, name: str):
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "metrics.csv"
        new = not self.path.exists()
        self.file = open(self.path, "a", newline="")
        self.writer = csv.writer(self.file)
        if new:
            self.writer.writerow(["iter", "loss", "val_loss", "lr", "tokens_per_s"])
        self.mlflow = None
        if os.environ.get("MLFLOW_TRACKING_URI"):
            try:
                import mlflow  # type: ignore[import-not-found]

                mlflow.start_run(run_name=f"nanogpt-{name}")
                mlflow.log_params(asdict(cfg))
                self.mlflow = mlflow
            except Exception as err:  # a tracking outage must not fail training
                print(f"mlflow unavailable, metrics stay local: {err}", file=sys.stderr)

    def log(self, it: int, loss: float, val_loss: float | None, lr: float, tps: float) -> None:
        self.writer.writerow([it, f"{loss:.5f}", "" if val_loss is None else f"{val_loss:.5f}", f"{lr:.6g}", f"{tps:.1f}"])
        self.file.flush()
        if self.mlflow:
            metrics = {"loss": loss, "lr": lr, "tokens_per_s": tps}
            if val_loss is not None:
                metrics["val_loss"] = val_loss
            self.mlflow.log_metrics(metrics, step=it)

    def close(self) -> None:
        self.file.close()
        if self.mlflow:
            self.mlflow.end_run()


def config_from_env() -> tuple[str, Config]:
    name = os.environ.get("NANOGPT_CONFIG", "tiny")
    if name not in CONFIGS:
        raise ValueError(f"NANOGPT_CONFIG must be one of {', '.join(CONFIGS)}, got {name!r}")
    cfg = CONFIGS[name]
    if "NANOGPT_MAX_ITERS" in os.environ:
        cfg = replace(cfg, max_iters=int(os.environ["NANOGPT_MAX_ITERS"]))
    return name, cfg


def train(name: str, cfg: Config) -> dict:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    workspace = Path(os.environ.get("CRUCIBLE_WORKSPACE", "/workspace"))
    checkpoints = Checkpoints(Path(os.environ.get("CRUCIBLE_CHECKPOINT_DIR", workspace / "checkpoints")))
    stop = {"requested": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(requested=True))

    text = load_text()
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([stoi[c] for c in text], dtype=torch.long)
    split = int(0.9 * len(data))
    train_data, val_data = data[:split], data[split:]

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    model = GPT(cfg, len(chars)).to(device)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.learning_rate,
        betas=(0.9, cfg.beta2),
        fused=device == "cuda",
    )
    data_gen = torch.Generator().manual_seed(cfg.seed)
    start_iter, best_val, resumed_from = 0, float("inf"), None

    state = checkpoints.load(device)
    if state is not None:
        if state["config"] != asdict(cfg) | {"max_iters": state["config"]["max_iters"]}:
            raise ValueError("the checkpoint was written by a different model configuration")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        data_gen.set_state(state["rng"]["data"])
        torch.set_rng_state(state["rng"]["torch"])
        if device == "cuda" and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"])
        random.setstate(state["rng"]["python"])
        start_iter, best_val, resumed_from = state["iter"], state["best_val_loss"], state["iter"]
        print(f"resumed from checkpoint at iteration {start_iter} (best val loss {best_val:.4f})", flush=True)

    def snapshot(it: int) -> None:
        checkpoints.save(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "rng": {
                    "data": data_gen.get_state(),
                    "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state() if device == "cuda" else None,
                    "python": random.getstate(),
                },
                "iter": it,
                "best_val_loss": best_val,
                "config": asdict(cfg),
                "vocab": chars,
            }
        )

    # NANOGPT_FAST=0 trains eager in fp32: the baseline `npm run bench:nanogpt` measures against.
    fast = os.environ.get("NANOGPT_FAST", "1") != "0"
    step_model = torch.compile(model) if fast and cfg.compile and device == "cuda" else model
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=fast and device == "cuda")

    @torch.no_grad()
    def evaluate(it: int) -> dict[str, float]:
        model.eval()
        out = {}
        for split_name, split_data in (("train", train_data), ("val", val_data)):
            gen = torch.Generator().manual_seed(cfg.seed + it)  # same batches whatever the history
            losses = torch.zeros(cfg.eval_iters)
            for k in range(cfg.eval_iters):
                x, y = batch(split_data, cfg, gen, device)
                with autocast:
                    _, loss = step_model(x, y)
                losses[k] = loss.item()
            out[split_name] = losses.mean().item()
        model.train()
        return out

    tracker = Tracker(workspace / "metrics", cfg, name)
    tokens_per_iter = cfg.batch_size * cfg.block_size
    losses: list[tuple[int, float]] = []
    it, loss_value, tps, window_start, window_iters = start_iter, float("nan"), 0.0, time.perf_counter(), 0
    train_start = time.perf_counter()
    try:
        while it < cfg.max_iters:
            if stop["requested"]:
                snapshot(it)
                print(f"SIGTERM: checkpoint saved at iteration {it}", flush=True)
                return {"stopped_at": it, "best_val_loss": best_val, "resumed_from": resumed_from}
            lr = lr_at(it, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, y = batch(train_data, cfg, data_gen, device)
            with autocast:
                _, loss = step_model(x, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            it += 1
            window_iters += 1

            last = it == cfg.max_iters
            if it % cfg.eval_interval == 0 or last or it % 10 == 0:
                loss_value = loss.item()  # syncs the device: only as often as we report
                losses.append((it, loss_value))
                elapsed = time.perf_counter() - window_start
                tps = tokens_per_iter * window_iters / elapsed if elapsed > 0 else 0.0
                window_start, window_iters = time.perf_counter(), 0
                val_loss = None
                if it % cfg.eval_interval == 0 or last:
                    val_loss = evaluate(it)["val"]
                    best_val = min(best_val, val_loss)
                    # For people reading the log; the numbers themselves go through progress() below.
                    print(f"iter {it}/{cfg.max_iters}: loss {loss_value:.4f}, val loss {val_loss:.4f}, {tps:.0f} tokens/s", flush=True)
                progress(step=it, total=cfg.max_iters, loss=round(loss_value, 4), lr=lr,
                         tokens_per_s=round(tps, 1), **({"val_loss": round(val_loss, 4)} if val_loss is not None else {}))
                tracker.log(it, loss_value, val_loss, lr, tps)
            if it % cfg.checkpoint_interval == 0 or last:
                snapshot(it)
        train_seconds = time.perf_counter() - train_start
        model.eval()
        sample_gen = torch.Generator(device=device).manual_seed(cfg.seed)
        start = torch.zeros((1, 1), dtype=torch.long, device=device)
        sample = "".join(chars[i] for i in model.generate(start, 300, sample_gen)[0].tolist())
        return {
            "config": name,
            "iterations": it,
            "resumed_from": resumed_from,
            "final_loss": round(loss_value, 4),
            "best_val_loss": round(best_val, 4),
            "ms_per_iter": round(1000 * train_seconds / max(1, it - start_iter), 2),
            "tokens_per_s": round(tokens_per_iter * (it - start_iter) / train_seconds, 1) if train_seconds > 0 else None,
            "loss_curve": losses,
            "sample": sample,
            "device": device,
            "fast": fast,
        }
    finally:
        tracker.close()


def main() -> dict:
    name, cfg = config_from_env()
    return train(name, cfg)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default=os.environ.get("NANOGPT_CONFIG", "tiny"))
    parser.add_argument("--max-iters", type=int)
    args = parser.parse_args()
    os.environ["NANOGPT_CONFIG"] = args.config
    if args.max_iters is not None:
        os.environ["NANOGPT_MAX_ITERS"] = str(args.max_iters)
    result = main()
    result.pop("loss_curve", None)
    print(json.dumps(result, indent=2))
