//! The tensor names of every model graph: the inputs and outputs model.onnx declares, the
//! names the ONNX Runtime backend feeds and fetches and the Open Inference Protocol serves.

/// Input: CT views `[N, C, H, W]`.
pub const IMAGES: &str = "images";
/// Input: encoded clinical features `[N, F]`.
pub const TABULAR: &str = "tabular";
/// Output: logits `[N, classes]`.
pub const LOGITS: &str = "logits";
/// Output: the last conv block's activation `[N, K, h, w]`.
pub const ACTIVATION: &str = "activation";
/// Output: Grad-CAM channel weights for every class `[N, classes, K]`.
pub const ALPHA: &str = "gradcam_alpha";
/// Output (fused models): d logit_c / d tabular for every class `[N, classes, F]`.
pub const TABULAR_GRADIENT: &str = "tabular_gradient";
