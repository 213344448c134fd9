"""The reference for the daemon's sliding window: MONAI's sliding_window_inference
(Gaussian blending, overlap 0.5) over a tiny random 3D conv model and a fixed
random input, written as a model bundle whose golden case is that input.

Runs in the training recipe's venv (PyTorch + MONAI), never in the daemon's:
    python tests/e2e/monai_reference.py OUT_DIR
Writes OUT_DIR/{manifest.toml, model.onnx, golden/input.npy, reference_logits.npy}.
"""
import hashlib
import os
import sys

import numpy as np
import torch
from monai.inferers import sliding_window_inference

PATCH = (16, 24, 20)
# Axis 0 is smaller than the patch (MONAI pads it symmetrically); the others need
# several patches, the last one moved back inside the volume.
SHAPE = (12, 50, 41)
CLASSES = 3


def main(out):
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv3d(1, 6, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv3d(6, CLASSES, 3, padding=1)).eval()
    os.makedirs(os.path.join(out, "golden"), exist_ok=True)
    onnx_path = os.path.join(out, "model.onnx")
    torch.onnx.export(net, torch.zeros(1, 1, *PATCH), onnx_path, input_names=["image"],
                      output_names=["logits"], opset_version=17, dynamo=False)
    x = np.random.default_rng(0).normal(size=SHAPE).astype("<f4")
    np.save(os.path.join(out, "golden", "input.npy"), x)
    with torch.no_grad():
        ref = sliding_window_inference(torch.from_numpy(x)[None, None], PATCH, 1, net,
                                       overlap=0.5, mode="gaussian", sigma_scale=0.125)
    ref = ref[0].numpy().astype("<f4")
    np.save(os.path.join(out, "reference_logits.npy"), ref)
    counts = np.bincount(ref.argmax(0).ravel(), minlength=CLASSES)
    sha = hashlib.sha256(open(onnx_path, "rb").read()).hexdigest()
    with open(os.path.join(out, "manifest.toml"), "w") as f:
        f.write(f'''name = "monai-window-reference"
version = "0"
description = "tiny random conv net: the sliding-window reference"
[input]
file = "model.onnx"
sha256 = "{sha}"
input_name = "image"
output_name = "logits"
spacing_mm = [1.0, 1.0, 1.0]
patch = {list(PATCH)}
channels = ["any"]
orientation = "LPS"
[normalisation]
method = "percentile"
low = 0.5
high = 99.5
[labels]
0 = "background"
1 = "a"
2 = "b"
[inference]
overlap = 0.5
blend = "gaussian"
[training]
[evaluation]
[golden]
input = "golden/input.npy"
shape = {list(SHAPE)}
voxel_counts = {[int(c) for c in counts]}
''')


if __name__ == "__main__":
    main(sys.argv[1])
