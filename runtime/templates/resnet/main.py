"""A small ResNet classifies scikit-learn's handwritten digits, upscaled and augmented with torchvision.

Runs as a Crucible job (`main()` returns the final metrics) or on its own (`python main.py --config cpu`).
Pick a configuration with RESNET_CONFIG (tiny | cpu | gpu); RESNET_MAX_STEPS overrides the length. The
digits (1797 images of 8x8 pixels) ship inside the image with scikit-learn, so the job needs no network
and no dataset. Checkpoints go to the crucible checkpoint directory (/workspace/checkpoints) every
`checkpoint_interval` steps and when SIGTERM arrives; a run that finds one resumes from it with the same
batches and augmentations, so the loss curve continues where it stopped.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn as nn
from torch.nn import functional as F
from torchvision.models.resnet import BasicBlock
from torchvision.transforms import v2

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
class Config:
    widths: tuple[int, ...]
    blocks: tuple[int, ...]
    image_size: int
    batch_size: int
    learning_rate: float
    max_steps: int
    warmup_steps: int
    eval_interval: int
    checkpoint_interval: int
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    val_fraction: float = 0.25
    seed: int = 1337


CONFIGS = {
    # Half a minute on two CPU cores; what the tests run. Three stages of one block: a ResNet-8.
    "tiny": Config(
        widths=(16, 32, 64), blocks=(1, 1, 1), image_size=32, batch_size=32, learning_rate=0.05,
        max_steps=300, warmup_steps=20, eval_interval=50, checkpoint_interval=50,
    ),
    # A ResNet-14 of CIFAR's shape, minutes on a CPU tier.
    "cpu": Config(
        widths=(16, 32, 64), blocks=(2, 2, 2), image_size=32, batch_size=64, learning_rate=0.1,
        max_steps=1500, warmup_steps=100, eval_interval=150, checkpoint_interval=300,
    ),
    # Wider and deeper (a ResNet-20 at twice the width) on a GPU tier.
    "gpu": Config(
        widths=(32, 64, 128), blocks=(3, 3, 3), image_size=32, batch_size=128, learning_rate=0.1,
        max_steps=3000, warmup_steps=150, eval_interval=250, checkpoint_interval=500,
    ),
}


class ResNet(nn.Module):
    """CIFAR-style ResNet: a 3x3 stem, stages of torchvision's BasicBlock, global pooling, a linear head."""

    def __init__(self, cfg: Config, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, cfg.widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(cfg.widths[0]), nn.ReLU()
        )
        stages, width = [], cfg.widths[0]
        for i, (out, count) in enumerate(zip(cfg.widths, cfg.blocks)):
            stride = 1 if i == 0 else 2
            for j in range(count):
                s = stride if j == 0 else 1
                down = None
                if s != 1 or width != out:
                    down = nn.Sequential(nn.Conv2d(width, out, 1, stride=s, bias=False), nn.BatchNorm2d(out))
                stages.append(BasicBlock(width, out, stride=s, downsample=down))
                width = out
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(width, classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def load_digits_split(cfg: Config):
    """The digits as 1-channel images of `image_size` pixels in [0, 1], split stratified into train and val."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    # Upscaled once, bilinear: the augmentations below then work at the resolution the network sees.
    images = v2.functional.resize(images, [cfg.image_size, cfg.image_size], antialias=True)
    labels = torch.tensor(digits.target, dtype=torch.long)
    train_idx, val_idx = train_test_split(
        list(range(len(labels))), test_size=cfg.val_fraction, random_state=cfg.seed, stratify=digits.target
    )
    return images[train_idx], labels[train_idx], images[val_idx], labels[val_idx]


def augmentation(cfg: Config) -> v2.Transform:
    """Small rotations, shifts and zooms: digits stay digits (no flips), each image drawn anew every step."""
    return v2.Compose(
        [
            v2.RandomAffine(degrees=12, translate=(0.1, 0.1), scale=(0.9, 1.1)),
            v2.RandomErasing(p=0.25, scale=(0.02, 0.08), value=0.0),
        ]
    )


def lr_at(step: int, cfg: Config) -> float:
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    ratio = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * ratio)) * cfg.learning_rate


class Checkpoints:
    """The latest checkpoint, written atomically: a kill mid-write leaves the previous one intact."""

    def __init__(self, directory: Path):
        self.latest = directory / "latest.pt"

    def load(self):
        return torch.load(self.latest, weights_only=False) if self.latest.exists() else None

    def save(self, state: dict) -> None:
        tmp = self.latest.with_name(f".latest.pt.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.latest)


def config_from_env() -> tuple[str, Config]:
    name = os.environ.get("RESNET_CONFIG", "tiny")
    if name not in CONFIGS:
        raise ValueError(f"RESNET_CONFIG must be one of {', '.join(CONFIGS)}, got {name!r}")
    cfg = CONFIGS[name]
    if "RESNET_MAX_STEPS" in os.environ:
        cfg = replace(cfg, max_steps=int(os.environ["RESNET_MAX_STEPS"]))
    return name, cfg


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, device: str) -> tuple[float, float]:
    model.eval()
    loss, correct = 0.0, 0
    for i in range(0, len(labels), 256):
        x, y = images[i : i + 256].to(device), labels[i : i + 256].to(device)
        logits = model(x)
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    model.train()
    return loss / len(labels), correct / len(labels)


def train(name: str, cfg: Config) -> dict:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    checkpoints = Checkpoints(checkpoint_dir())
    stop = {"requested": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(requested=True))

    train_x, train_y, val_x, val_y = load_digits_split(cfg)
    mean, std = train_x.mean().item(), train_x.std().item()
    normalize = v2.Normalize([mean], [std])
    train_x, val_x = normalize(train_x), normalize(val_x)
    augment = augmentation(cfg)

    torch.manual_seed(cfg.seed)
    model = ResNet(cfg).to(device)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=cfg.learning_rate, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay
    )
    batches = torch.Generator().manual_seed(cfg.seed)  # which images each step trains on
    step, best_acc, resumed_from = 0, 0.0, None

    state = checkpoints.load()
    if state is not None:
        if state["config"] != asdict(cfg) | {"max_steps": state["config"]["max_steps"]}:
            raise ValueError("the checkpoint was written by a different model configuration")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        batches.set_state(state["rng"]["batches"])
        torch.set_rng_state(state["rng"]["torch"])  # the augmentations draw from it
        step, best_acc, resumed_from = state["step"], state["best_val_accuracy"], state["step"]
        print(f"resumed from checkpoint at step {step} (best val accuracy {best_acc:.4f})", flush=True)

    def snapshot() -> None:
        checkpoints.save(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "rng": {"batches": batches.get_state(), "torch": torch.get_rng_state()},
                "step": step,
                "best_val_accuracy": best_acc,
                "config": asdict(cfg),
                "normalize": {"mean": mean, "std": std},
            }
        )

    losses: list[tuple[int, float]] = []
    evals: list[tuple[int, float, float]] = []
    started, start_step = time.perf_counter(), step
    while step < cfg.max_steps:
        if stop["requested"]:
            snapshot()
            print(f"SIGTERM: checkpoint saved at step {step}", flush=True)
            return {"stopped_at": step, "best_val_accuracy": best_acc, "resumed_from": resumed_from}
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        idx = torch.randint(len(train_y), (cfg.batch_size,), generator=batches)
        x = torch.stack([augment(img) for img in train_x[idx]]).to(device)
        loss = F.cross_entropy(model(x), train_y[idx].to(device), label_smoothing=cfg.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1

        last = step == cfg.max_steps
        if step % 10 == 0 or last or step % cfg.eval_interval == 0:
            loss_value = loss.item()
            losses.append((step, round(loss_value, 4)))
            extra = {}
            if step % cfg.eval_interval == 0 or last:
                val_loss, val_acc = evaluate(model, val_x, val_y, device)
                best_acc = max(best_acc, val_acc)
                evals.append((step, round(val_loss, 4), round(val_acc, 4)))
                extra = {"val_loss": round(val_loss, 4), "val_accuracy": round(val_acc, 4)}
                print(f"step {step}/{cfg.max_steps}: loss {loss_value:.4f}, val loss {val_loss:.4f}, "
                      f"val accuracy {val_acc:.4f}", flush=True)
            progress(step=step, total=cfg.max_steps, loss=round(loss_value, 4), lr=lr, **extra)
        if step % cfg.checkpoint_interval == 0 or last:
            snapshot()

    seconds = time.perf_counter() - started
    val_loss, val_acc = evaluate(model, val_x, val_y, device)
    return {
        "config": name,
        "steps": step,
        "resumed_from": resumed_from,
        "epochs": round(step * cfg.batch_size / len(train_y), 2),
        "final_loss": losses[-1][1] if losses else None,
        "val_loss": round(val_loss, 4),
        "val_accuracy": round(val_acc, 4),
        "best_val_accuracy": round(max(best_acc, val_acc), 4),
        "train_images": len(train_y),
        "val_images": len(val_y),
        "parameters": sum(p.numel() for p in model.parameters()),
        "ms_per_step": round(1000 * seconds / max(1, step - start_step), 1),
        "loss_curve": losses,
        "evaluations": evals,
        "device": device,
    }


def main() -> dict:
    name, cfg = config_from_env()
    return train(name, cfg)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default=os.environ.get("RESNET_CONFIG", "tiny"))
    parser.add_argument("--max-steps", type=int)
    args = parser.parse_args()
    os.environ["RESNET_CONFIG"] = args.config
    if args.max_steps is not None:
        os.environ["RESNET_MAX_STEPS"] = str(args.max_steps)
    result = main()
    result.pop("loss_curve", None)
    print(json.dumps(result, indent=2))
