"""Trains the default brain-tumour model and writes its bundle.

    python models/training/train.py --out models/brats-synth-unet

Steps: generate domain-randomised synthetic cases (synth.py), train a MONAI 3D U-Net
on random patches on the CPU, evaluate on held-out cases with MONAI's sliding-window
inference, export ONNX (logits: no Softmax/ArgMax inside), write a golden case and
manifest.toml with the measured Dice. Seeds are fixed; the same command gives the
same data and, up to floating-point non-determinism of threaded CPU kernels, the
same model.
"""
import argparse
import hashlib
import json
import os
import sys
import time
from multiprocessing import Pool

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from monai.networks.nets import UNet

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import synth  # noqa: E402

PATCH = (64, 64, 64)
CLASSES = 4
LABELS = {0: "background", 1: "necrotic core", 2: "oedema", 3: "enhancing tumour"}
EVAL_SEED0 = 1_000_000
GOLDEN_SHAPE = (64, 80, 72)


def network():
    return UNet(spatial_dims=3, in_channels=1, out_channels=CLASSES, channels=(16, 32, 64, 128),
                strides=(2, 2, 2), num_res_units=1, norm="instance", act="relu")


def make_case(seed):
    img, lab = synth.case(seed)
    return synth.normalise(img), lab


def cases(seeds, workers):
    with Pool(workers) as p:
        return p.map(make_case, seeds)


def sample(rng, data, batch):
    """Random patches, 90% centred near tumour voxels (they are ~2% of a patch),
    random left-right flip and gamma."""
    xs, ys = [], []
    for _ in range(batch):
        img, lab = data[rng.integers(len(data))]
        fg = np.argwhere(lab > 0) if rng.random() < 0.9 else np.empty((0, 3))
        c = fg[rng.integers(len(fg))] if len(fg) else [rng.integers(s) for s in img.shape]
        start = [int(np.clip(ci - p // 2 + rng.integers(-16, 17), 0, max(s - p, 0))) for ci, p, s in zip(c, PATCH, img.shape)]
        sl = tuple(slice(s, s + p) for s, p in zip(start, PATCH))
        x, y = img[sl], lab[sl]
        pad = [(0, p - s) for p, s in zip(PATCH, x.shape)]
        x, y = np.pad(x, pad), np.pad(y, pad)
        if rng.random() < 0.5:
            x, y = x[:, :, ::-1], y[:, :, ::-1]
        if rng.random() < 0.3:
            x = np.sign(x) * np.abs(x) ** rng.uniform(0.7, 1.5)
        xs.append(np.ascontiguousarray(x)[None])
        ys.append(np.ascontiguousarray(y)[None])
    return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys).astype(np.int64))


def dice(a, b):
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else 2.0 * np.logical_and(a, b).sum() / s


def segment(net, img):
    with torch.no_grad():
        x = torch.from_numpy(img)[None, None]
        logits = sliding_window_inference(x, PATCH, 4, net, overlap=0.5, mode="gaussian")
    return logits[0].argmax(0).numpy().astype(np.uint8)


def evaluate(net, data):
    net.eval()
    rows = []
    for img, lab in data:
        pred = segment(net, img)
        wt_t, wt_p = lab > 0, pred > 0
        rows.append({
            "wt": dice(wt_t, wt_p),
            "tc": dice(np.isin(lab, (1, 3)), np.isin(pred, (1, 3))),
            "et": dice(lab == 3, pred == 3),
            "true_ml": float(wt_t.sum() * synth.SPACING ** 3 / 1000),
            "pred_ml": float(wt_p.sum() * synth.SPACING ** 3 / 1000),
        })
    with_tumour = [r for r in rows if r["true_ml"] > 0]
    return {
        "cases": len(rows),
        "cases_with_tumour": len(with_tumour),
        "dice_whole_tumour_mean": float(np.mean([r["wt"] for r in with_tumour])),
        "dice_whole_tumour_min": float(np.min([r["wt"] for r in with_tumour])),
        "dice_tumour_core_mean": float(np.mean([r["tc"] for r in with_tumour])),
        "dice_enhancing_mean": float(np.mean([r["et"] for r in with_tumour])),
        "volume_error_pct_mean": float(np.mean([abs(r["pred_ml"] - r["true_ml"]) / r["true_ml"] * 100 for r in with_tumour])),
        "false_positive_ml_max": float(max([r["pred_ml"] for r in rows if r["true_ml"] == 0] or [0.0])),
        "per_case": rows,
    }


def export(net, path):
    net.eval()
    dummy = torch.zeros(1, 1, *PATCH)
    torch.onnx.export(net, dummy, path, input_names=["image"], output_names=["logits"],
                      opset_version=17, dynamo=False)


def golden(onnx_path, data, out_dir):
    """A small input on the model grid around a held-out tumour, and the labels ONNX
    Runtime gives it through MONAI's sliding window (overlap 0.5, gaussian)."""
    import onnxruntime as ort
    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    run = lambda x: torch.from_numpy(sess.run(None, {"image": x.numpy()})[0])
    img, lab = next((i, l) for i, l in data if (l > 0).sum() > 2000)
    c = np.argwhere(lab > 0).mean(0).astype(int)
    start = [int(np.clip(ci - g // 2, 0, s - g)) for ci, g, s in zip(c, GOLDEN_SHAPE, img.shape)]
    crop = np.ascontiguousarray(img[tuple(slice(s, s + g) for s, g in zip(start, GOLDEN_SHAPE))])
    with torch.no_grad():
        logits = sliding_window_inference(torch.from_numpy(crop)[None, None], PATCH, 1, run, overlap=0.5, mode="gaussian")
    pred = logits[0].argmax(0).numpy()
    os.makedirs(out_dir, exist_ok=True)
    np.save(os.path.join(out_dir, "input.npy"), crop.astype("<f4"))
    counts = np.bincount(pred.ravel(), minlength=CLASSES)
    return {"shape": list(GOLDEN_SHAPE), "voxel_counts": [int(v) for v in counts]}


def toml_value(v):
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, float):
        return repr(round(v, 4))
    return str(v)


def manifest(out, name, version, metrics, golden_info, sha, args, train_s):
    lines = [
        "# Written by models/training/train.py; do not edit by hand (the sha256 and Dice are measured).",
        f"name = {toml_value(name)}",
        f"version = {toml_value(version)}",
        'description = "3D U-Net (MONAI), whole brain MR, one channel of any contrast, BraTS labels"',
        '# The daemons that may install this bundle over the air ([ota] compatible).',
        'compatible = "scanside-model-1"',
        "",
        "[input]",
        'file = "model.onnx"',
        f"sha256 = {toml_value(sha)}",
        'input_name = "image"',
        'output_name = "logits"',
        f"spacing_mm = {toml_value([synth.SPACING] * 3)}",
        f"patch = {toml_value(list(PATCH))}",
        'channels = ["any MR contrast (T1, T1 post-contrast, T2, FLAIR)"]',
        'orientation = "LPS"',
        "",
        "[normalisation]",
        'method = "percentile"',
        "low = 0.5",
        "high = 99.5",
        "",
        "[labels]",
    ] + [f'{k} = {toml_value(v)}' for k, v in LABELS.items()] + [
        "",
        "[inference]",
        "overlap = 0.5",
        'blend = "gaussian"',
        "",
        "[training]",
        'data = "domain-randomised synthetic cases from the MNI ICBM152 2009a template (nilearn): random contrast, '
        'deformation, tumours with necrotic core, enhancing rim and oedema, bias field, resolution loss, Rician noise"',
        f"cases = {args.cases}",
        f"iterations = {args.iterations}",
        f"continued_from = {toml_value(os.path.basename(args.init) if args.init else '')}",
        f"previous_iterations = {args.previous_iterations}",
        f"batch = {args.batch}",
        f"seconds = {int(train_s)}",
        'recipe = "models/training/train.py"',
        "",
        "[evaluation]",
        f'held_out = "{metrics["cases"]} synthetic cases (seeds from {EVAL_SEED0}), {metrics["cases_with_tumour"]} with a tumour, model grid, MONAI sliding window"',
    ] + [f"{k} = {toml_value(v)}" for k, v in metrics.items() if k not in ("per_case", "cases", "cases_with_tumour")] + [
        "",
        "[golden]",
        'input = "golden/input.npy"',
        f"shape = {toml_value(golden_info['shape'])}",
        f"voxel_counts = {toml_value(golden_info['voxel_counts'])}",
        "",
    ]
    with open(os.path.join(out, "manifest.toml"), "w") as f:
        f.write("\n".join(lines))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--name", default="brats-synth-unet")
    ap.add_argument("--version", default="1.0.0")
    ap.add_argument("--cases", type=int, default=120)
    ap.add_argument("--eval-cases", type=int, default=20)
    ap.add_argument("--iterations", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--init", help="continue from these weights (a .pt this script saved)")
    ap.add_argument("--max-lr", type=float, default=3e-3)
    ap.add_argument("--previous-iterations", type=int, default=0, help="iterations behind --init (for the manifest)")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    # A continued run draws other patches than the run it continues.
    rng = np.random.default_rng(1 if args.init else 0)
    t0 = time.time()
    train = cases(range(args.cases), args.threads)
    held_out = cases(range(EVAL_SEED0, EVAL_SEED0 + args.eval_cases), args.threads)
    print(f"data: {len(train)} + {len(held_out)} cases in {time.time() - t0:.0f} s", flush=True)
    net = network()
    if args.init:
        net.load_state_dict(torch.load(args.init))
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.max_lr, total_steps=args.iterations, pct_start=0.02)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)
    t1 = time.time()
    for it in range(args.iterations):
        net.train()
        x, y = sample(rng, train, args.batch)
        out = net(x)
        # Whole tumour (not background) as its own Dice term: the figure the
        # daemon reports first, and the label the small compartments sit in.
        p_wt = 1 - torch.softmax(out, 1)[:, 0]
        t_wt = (y[:, 0] > 0).float()
        wt_dice = 1 - (2 * (p_wt * t_wt).sum() + 1) / (p_wt.sum() + t_wt.sum() + 1)
        loss = loss_fn(out, y) + wt_dice
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if it % 50 == 0 or it == args.iterations - 1:
            print(f"it {it} loss {loss.item():.4f} {time.time() - t1:.0f} s", flush=True)
        if it % 500 == 499:
            quick = evaluate(net, held_out[:4])
            print(f"it {it} held-out[:4] whole-tumour Dice {quick['dice_whole_tumour_mean']:.3f}", flush=True)
    train_s = time.time() - t1
    metrics = evaluate(net, held_out)
    print(json.dumps({k: v for k, v in metrics.items() if k != "per_case"}, indent=1), flush=True)
    os.makedirs(args.out, exist_ok=True)
    onnx_path = os.path.join(args.out, "model.onnx")
    export(net, onnx_path)
    torch.save(net.state_dict(), os.path.join(args.out, "..", f".{args.name}.pt"))
    sha = hashlib.sha256(open(onnx_path, "rb").read()).hexdigest()
    golden_info = golden(onnx_path, held_out, os.path.join(args.out, "golden"))
    with open(os.path.join(args.out, "evaluation.json"), "w") as f:
        json.dump(metrics, f, indent=1)
    manifest(args.out, args.name, args.version, metrics, golden_info, sha, args, train_s)
    print(f"wrote {args.out} in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
