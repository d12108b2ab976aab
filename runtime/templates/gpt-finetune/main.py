"""Fine-tunes a nanogpt checkpoint to a tiktoken BPE vocabulary on Tiny Shakespeare, offline.

Runs as a Crucible job (`main()` returns the final metrics) or on its own (`python main.py --config cpu`).
Pick a configuration with FINETUNE_CONFIG (tiny | cpu | gpu); FINETUNE_MAX_ITERS overrides the length.
The base is the nanogpt template's checkpoint: FINETUNE_BASE names it (relative to the checkpoint
directory), by default the `latest.pt` that `crucible submit --resume-from NANOGPT_JOB` (or a shared
`--workspace`) puts there. Its transformer blocks, final norm and position embeddings are reused; the
token embeddings and the tied output head are rebuilt for the BPE vocabulary, each token from its
characters' embeddings. Without a base it trains from scratch. Its own checkpoints (`finetune.pt`) are
written every `checkpoint_interval` iterations and on SIGTERM, and a run that finds one resumes from it.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import random
import signal
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn as nn
from torch.nn import functional as F

import bpe

HERE = Path(__file__).resolve().parent
CHECKPOINT = "finetune.pt"
DEFAULT_BASE = "latest.pt"  # the nanogpt template's checkpoint file

try:  # inside a Crucible image the runner's helpers; elsewhere the same protocol and directory
    from crucible import checkpoint_dir, progress
except ImportError:  # pragma: no cover - exercised outside the job images

    def progress(step=None, total=None, **metrics):
        line = {k: v for k, v in {"step": step, "total": total, **metrics}.items() if v is not None}
        print("##crucible:progress " + json.dumps(line), flush=True)

    def checkpoint_dir():
        path = Path(os.environ.get("CRUCIBLE_CHECKPOINT_DIR", "checkpoints"))
        path.mkdir(parents=True, exist_ok=True)
        return path


@dataclass(frozen=True)
class Model:
    """The transformer's shape: the base checkpoint's when there is one (nanogpt's config names)."""

    n_layer: int
    n_head: int
    n_embd: int
    block_size: int
    dropout: float


@dataclass(frozen=True)
class Config:
    model: Model  # used when training from scratch
    vocab_size: int  # BPE tokens: 256 bytes plus merges
    batch_size: int
    learning_rate: float
    min_lr: float
    max_iters: int
    warmup_iters: int
    eval_interval: int
    eval_iters: int
    checkpoint_interval: int
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 1337


CONFIGS = {
    # About a minute on two CPU cores; what the tests run. Fits the nanogpt template's `tiny` checkpoints.
    "tiny": Config(
        model=Model(n_layer=2, n_head=2, n_embd=64, block_size=64, dropout=0.0), vocab_size=512,
        batch_size=16, learning_rate=1e-3, min_lr=1e-4, max_iters=150, warmup_iters=10, eval_interval=50,
        eval_iters=10, checkpoint_interval=50,
    ),
    "cpu": Config(
        model=Model(n_layer=4, n_head=4, n_embd=128, block_size=128, dropout=0.1), vocab_size=1024,
        batch_size=32, learning_rate=6e-4, min_lr=6e-5, max_iters=1500, warmup_iters=50, eval_interval=250,
        eval_iters=50, checkpoint_interval=250,
    ),
    "gpu": Config(
        model=Model(n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.2), vocab_size=2048,
        batch_size=64, learning_rate=3e-4, min_lr=3e-5, max_iters=3000, warmup_iters=100, eval_interval=250,
        eval_iters=100, checkpoint_interval=500,
    ),
}


# The nanogpt template's transformer, module for module, so its state dict loads into this one.
class CausalSelfAttention(nn.Module):
    def __init__(self, m: Model):
        super().__init__()
        self.n_head = m.n_head
        self.qkv = nn.Linear(m.n_embd, 3 * m.n_embd, bias=False)
        self.proj = nn.Linear(m.n_embd, m.n_embd, bias=False)
        self.dropout = m.dropout
        self.resid_drop = nn.Dropout(m.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )
        return self.resid_drop(self.proj(y.transpose(1, 2).contiguous().view(b, t, c)))


class Block(nn.Module):
    def __init__(self, m: Model):
        super().__init__()
        self.ln1 = nn.LayerNorm(m.n_embd, bias=False)
        self.attn = CausalSelfAttention(m)
        self.ln2 = nn.LayerNorm(m.n_embd, bias=False)
        self.mlp = nn.Sequential(
            nn.Linear(m.n_embd, 4 * m.n_embd, bias=False),
            nn.GELU(),
            nn.Linear(4 * m.n_embd, m.n_embd, bias=False),
            nn.Dropout(m.dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, m: Model, vocab_size: int):
        super().__init__()
        self.block_size = m.block_size
        self.tok = nn.Embedding(vocab_size, m.n_embd)
        self.pos = nn.Embedding(m.block_size, m.n_embd)
        self.drop = nn.Dropout(m.dropout)
        self.blocks = nn.ModuleList(Block(m) for _ in range(m.n_layer))
        self.ln_f = nn.LayerNorm(m.n_embd, bias=False)
        self.head = nn.Linear(m.n_embd, vocab_size, bias=False)
        self.tok.weight = self.head.weight  # weight tying
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)

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


def load_base(path: Path) -> dict | None:
    """A nanogpt checkpoint (model weights, its config and character vocabulary), or None if absent."""
    if not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    if not {"model", "config", "vocab"} <= state.keys():
        raise ValueError(f"{path.name} is not a nanogpt checkpoint (it has {', '.join(sorted(state))})")
    return state


def adopt_base(model: GPT, base: dict, token_bytes: list[bytes]) -> dict:
    """Copies what carries over from the character-level base; returns what was reused and rebuilt.

    Blocks, final norm and position embeddings have the same shapes and meaning. The vocabulary does
    not: each BPE token's embedding (tied to the output head) starts as the mean of the base's
    embeddings of its characters, or at random for tokens with characters the base never saw.
    """
    weights = base["model"]
    reused = [k for k in model.state_dict() if not k.startswith(("tok.", "head.")) and k in weights]
    model.load_state_dict({k: weights[k] for k in reused}, strict=False)
    char_index = {c: i for i, c in enumerate(base["vocab"])}
    char_emb = weights["tok.weight"]
    from_chars = 0
    with torch.no_grad():
        for token, data in enumerate(token_bytes):
            try:
                chars = data.decode("utf-8")
            except UnicodeDecodeError:
                continue
            if chars and all(c in char_index for c in chars):
                model.tok.weight[token] = char_emb[[char_index[c] for c in chars]].mean(0)
                from_chars += 1
    return {
        "iter": base.get("iter"),
        "reused": len(reused),
        "rebuilt": ["tok.weight", "head.weight (tied)"],
        "tokens_from_characters": from_chars,
        "tokens_random": len(token_bytes) - from_chars,
    }


def lr_at(it: int, cfg: Config) -> float:
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / cfg.warmup_iters
    ratio = min(1.0, (it - cfg.warmup_iters) / max(1, cfg.max_iters - cfg.warmup_iters))
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.learning_rate - cfg.min_lr)


def batch(data: torch.Tensor, block: int, size: int, gen: torch.Generator, device: str):
    ix = torch.randint(len(data) - block - 1, (size,), generator=gen)
    x = torch.stack([data[i : i + block] for i in ix])
    y = torch.stack([data[i + 1 : i + 1 + block] for i in ix])
    return x.to(device), y.to(device)


def save(path: Path, state: dict) -> None:
    """Atomically: a kill mid-write leaves the previous checkpoint intact."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def config_from_env() -> tuple[str, Config]:
    name = os.environ.get("FINETUNE_CONFIG", "tiny")
    if name not in CONFIGS:
        raise ValueError(f"FINETUNE_CONFIG must be one of {', '.join(CONFIGS)}, got {name!r}")
    cfg = CONFIGS[name]
    if "FINETUNE_MAX_ITERS" in os.environ:
        cfg = replace(cfg, max_iters=int(os.environ["FINETUNE_MAX_ITERS"]))
    return name, cfg


def train(name: str, cfg: Config) -> dict:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    directory = checkpoint_dir()
    own = directory / CHECKPOINT
    stop = {"requested": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(requested=True))

    with gzip.open(HERE / "data" / "tinyshakespeare.txt.gz", "rt", encoding="utf-8") as f:
        text = f.read()
    split = int(0.9 * len(text))

    state = torch.load(own, map_location=device, weights_only=False) if own.exists() else None
    base_info = None
    tokenizer_seconds = 0.0
    if state is not None:  # resuming: the tokenizer and the model's shape come from the checkpoint
        ranks, shape = state["ranks"], Model(**state["model_shape"])
        base_info = state["base"]
    else:
        started = time.perf_counter()
        ranks = bpe.train_ranks(text[:split], cfg.vocab_size)  # learnt on the training split only
        tokenizer_seconds = time.perf_counter() - started
        base_path = directory / os.environ.get("FINETUNE_BASE", DEFAULT_BASE)
        base = load_base(base_path)
        shape = cfg.model
        if base is not None:
            b = base["config"]
            shape = Model(b["n_layer"], b["n_head"], b["n_embd"], b["block_size"], cfg.model.dropout)
    enc = bpe.encoding(ranks)
    token_bytes = [enc.decode_single_token_bytes(t) for t in range(len(ranks))]
    train_data = torch.tensor(enc.encode_ordinary(text[:split]), dtype=torch.long)
    val_data = torch.tensor(enc.encode_ordinary(text[split:]), dtype=torch.long)

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    model = GPT(shape, enc.n_vocab).to(device)
    if state is None and base is not None:
        base_info = {"file": base_path.name, **adopt_base(model, base, token_bytes)}
        print(f"fine-tuning {base_path.name} (nanogpt, iteration {base_info['iter']}): "
              f"{base_info['reused']} tensors reused, embeddings rebuilt for {enc.n_vocab} BPE tokens", flush=True)
    elif state is None:
        print(f"no base checkpoint at {base_path}: training from scratch", flush=True)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.learning_rate,
        betas=(0.9, 0.99),
    )
    data_gen = torch.Generator().manual_seed(cfg.seed)
    it, resumed_from = 0, None
    if state is not None:
        if state["config"] != asdict(cfg) | {"max_iters": state["config"]["max_iters"]}:
            raise ValueError(f"{CHECKPOINT} was written by a different configuration")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        data_gen.set_state(state["rng"]["data"])
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])
        it = resumed_from = state["iter"]
        print(f"resumed from {CHECKPOINT} at iteration {it}", flush=True)

    def snapshot() -> None:
        save(own, {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng": {"data": data_gen.get_state(), "torch": torch.get_rng_state(), "python": random.getstate()},
            "iter": it,
            "config": asdict(cfg),
            "model_shape": asdict(shape),
            "ranks": ranks,
            "base": base_info,
        })

    @torch.no_grad()
    def evaluate(step: int) -> float:
        model.eval()
        gen = torch.Generator().manual_seed(cfg.seed + step)  # the same batches whatever the history
        losses = [model(*batch(val_data, shape.block_size, cfg.batch_size, gen, device))[1].item()
                  for _ in range(cfg.eval_iters)]
        model.train()
        return sum(losses) / len(losses)

    losses: list[tuple[int, float]] = []
    evals: list[tuple[int, float]] = []
    initial_val = None
    if it == 0:  # where the loss starts: what the base brings, next to ln(vocabulary) from scratch
        initial_val = evaluate(0)
        progress(step=0, total=cfg.max_iters, val_loss=round(initial_val, 4))
    started, start_iter = time.perf_counter(), it
    while it < cfg.max_iters:
        if stop["requested"]:
            snapshot()
            print(f"SIGTERM: checkpoint saved at iteration {it}", flush=True)
            return {"stopped_at": it, "resumed_from": resumed_from}
        lr = lr_at(it, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = batch(train_data, shape.block_size, cfg.batch_size, data_gen, device)
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        it += 1

        last = it == cfg.max_iters
        if it % 10 == 0 or last or it % cfg.eval_interval == 0:
            loss_value = loss.item()
            losses.append((it, round(loss_value, 4)))
            extra = {}
            if it % cfg.eval_interval == 0 or last:
                val_loss = evaluate(it)
                evals.append((it, round(val_loss, 4)))
                extra = {"val_loss": round(val_loss, 4)}
                print(f"iter {it}/{cfg.max_iters}: loss {loss_value:.4f}, val loss {val_loss:.4f}", flush=True)
            progress(step=it, total=cfg.max_iters, loss=round(loss_value, 4), lr=lr, **extra)
        if it % cfg.checkpoint_interval == 0 or last:
            snapshot()

    seconds = time.perf_counter() - started
    model.eval()
    prompt = torch.tensor([enc.encode_ordinary("ROMEO:\n")], dtype=torch.long, device=device)
    sample = enc.decode(model.generate(prompt, 120, torch.Generator(device=device).manual_seed(cfg.seed))[0].tolist())
    return {
        "config": name,
        "iterations": it,
        "resumed_from": resumed_from,
        "base": base_info,
        "vocab_size": enc.n_vocab,
        "characters_per_token": round(split / len(train_data), 2),
        "tokenizer_seconds": round(tokenizer_seconds, 2),
        "initial_val_loss": None if initial_val is None else round(initial_val, 4),
        "final_loss": losses[-1][1] if losses else None,
        "final_val_loss": evals[-1][1] if evals else None,
        "ms_per_iter": round(1000 * seconds / max(1, it - start_iter), 1),
        "loss_curve": losses,
        "evaluations": evals,
        "sample": sample,
        "device": device,
    }


def main() -> dict:
    name, cfg = config_from_env()
    return train(name, cfg)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default=os.environ.get("FINETUNE_CONFIG", "tiny"))
    parser.add_argument("--max-iters", type=int)
    args = parser.parse_args()
    os.environ["FINETUNE_CONFIG"] = args.config
    if args.max_iters is not None:
        os.environ["FINETUNE_MAX_ITERS"] = str(args.max_iters)
    result = main()
    result.pop("loss_curve", None)
    print(json.dumps(result, indent=2))
