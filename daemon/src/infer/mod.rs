//! Inference. So far the backend-independent part: sliding-window tiling with
//! Gaussian blending, mirroring TTA and argmax (`window`). The Backend trait with
//! ONNX Runtime and tract, and the trained model, come with the segmentation issue.

pub mod window;
