//! Finding weights files, hashing them, and reading them into a `VarBuilder` with the key
//! layout the model code expects.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use sha2::{Digest, Sha256};

use crate::models::mobilenet_v2;
use crate::{EmbedError, ModelKind};

/// The file extensions tried, in order, for `<name>.<ext>` in a models directory.
const EXTENSIONS: [&str; 2] = ["safetensors", "pth"];

/// The weights-file marker of the `weights_sha256` field for the synthetic golden-test weights.
pub const SYNTHETIC_WEIGHTS_ID: &str = "synthetic:fnv1a-splitmix64-seed1";

/// The Hugging Face hub repository (timm layout, file `model.safetensors`) for a model, where
/// one is known.
pub fn hub_repo(model: ModelKind) -> Option<&'static str> {
    match model {
        ModelKind::MobileNetV2 => Some("timm/mobilenetv2_100.ra_in1k"),
        ModelKind::ResNet50 => Some("timm/resnet50.tv_in1k"),
        ModelKind::Vgg16 => Some("timm/vgg16.tv_in1k"),
        ModelKind::EfficientNetLite0 => None,
    }
}

/// The local directories searched for `<model>.safetensors` / `<model>.pth`, in order:
/// `$WTB_MODELS_DIR`, `./models`, then the `models/` folder of the workspace this crate was
/// built in (when it exists).
pub fn weight_search_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(dir) = std::env::var_os("WTB_MODELS_DIR") {
        dirs.push(PathBuf::from(dir));
    }
    dirs.push(PathBuf::from("models"));
    let workspace = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../models"));
    if workspace.is_dir() {
        dirs.push(workspace.to_path_buf());
    }
    let mut unique: Vec<PathBuf> = Vec::new();
    for dir in dirs {
        let same = |other: &PathBuf| match (dir.canonicalize(), other.canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => *other == dir,
        };
        if !unique.iter().any(same) {
            unique.push(dir);
        }
    }
    unique
}

/// The weights that ship with this crate: the torchvision MobileNetV2 ImageNet weights
/// (BSD-3-Clause) in half precision, read back as float32 (`weights/README.md`). The last
/// resort of [`resolve_weights`] for MobileNetV2, so that a fresh clone runs.
pub const SHIPPED_MOBILENET_V2: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/weights/mobilenet_v2_imagenet1k_fp16.safetensors"
);

/// The weights file of `model` in `dir`: `<name>.safetensors` or `<name>.pth`, else the only
/// file named `<name>_*.safetensors` or `<name>_*.pth` (as downloads are named, e.g.
/// `mobilenet_v2_torchvision_imagenet1k.safetensors`). Several such files are an error naming
/// them; a missing folder is no file.
pub fn weights_in_dir(dir: &Path, model: ModelKind) -> Result<Option<PathBuf>, EmbedError> {
    let name = model.name();
    for ext in EXTENSIONS {
        let exact = dir.join(format!("{name}.{ext}"));
        if exact.is_file() {
            return Ok(Some(exact));
        }
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(None);
    };
    let prefix = format!("{name}_");
    let mut matches: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let file = p
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            file.starts_with(&prefix)
                && EXTENSIONS
                    .iter()
                    .any(|ext| file.ends_with(&format!(".{ext}")))
                && p.is_file()
        })
        .collect();
    matches.sort();
    match matches.len() {
        0 | 1 => Ok(matches.pop()),
        _ => Err(EmbedError::InvalidArgument(format!(
            "several weights files for {name} in {}: {}; pass the one to use with --weights",
            dir.display(),
            matches
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// The first local weights file for `model` in `dirs` (see [`weights_in_dir`]), if any;
/// folders with several candidates are passed over.
pub fn find_local_weights(model: ModelKind, dirs: &[PathBuf]) -> Option<PathBuf> {
    dirs.iter()
        .find_map(|dir| weights_in_dir(dir, model).ok().flatten())
}

/// Resolves the weights file of `model`: `explicit` when given; else the first file of
/// [`weights_in_dir`] in [`weight_search_dirs`]; else, for MobileNetV2, the weights shipped
/// with this crate ([`SHIPPED_MOBILENET_V2`]); else (with the `hub` feature) a download from
/// the Hugging Face hub. When nothing is found the error lists every
/// place searched and what to put where.
pub fn resolve_weights(model: ModelKind, explicit: Option<&Path>) -> Result<PathBuf, EmbedError> {
    resolve_weights_in(
        model,
        explicit,
        &weight_search_dirs(),
        cfg!(feature = "hub"),
        true,
    )
}

pub(crate) fn resolve_weights_in(
    model: ModelKind,
    explicit: Option<&Path>,
    dirs: &[PathBuf],
    use_hub: bool,
    use_shipped: bool,
) -> Result<PathBuf, EmbedError> {
    if let Some(path) = explicit {
        if path.is_file() {
            return Ok(path.to_path_buf());
        }
        return Err(EmbedError::WeightsNotFound {
            model: model.name().to_string(),
            searched: format!("  {} (given explicitly): no such file", path.display()),
            hint: "check the --weights path".to_string(),
        });
    }
    let mut searched: Vec<String> = Vec::new();
    for dir in dirs {
        match weights_in_dir(dir, model)? {
            Some(path) => return Ok(path),
            None => {
                let names = EXTENSIONS
                    .map(|ext| format!("{0}.{ext} or {0}_*.{ext}", model.name()))
                    .join(", ");
                searched.push(format!("  {}: no {names}", dir.display()));
            }
        }
    }
    if model == ModelKind::MobileNetV2 && use_shipped {
        let shipped = Path::new(SHIPPED_MOBILENET_V2);
        if shipped.is_file() {
            return Ok(shipped.to_path_buf());
        }
        searched.push(format!("  {}: missing", shipped.display()));
    }
    match (hub_repo(model), use_hub) {
        (Some(repo), true) => match download_from_hub(repo) {
            Ok(path) => return Ok(path),
            Err(reason) => searched.push(format!(
                "  Hugging Face hub {repo}/model.safetensors: {reason}"
            )),
        },
        (Some(repo), false) => searched.push(format!(
            "  Hugging Face hub {repo}: not tried (built without the `hub` feature)"
        )),
        (None, _) => {
            searched.push("  Hugging Face hub: no known repository for this layout".to_string())
        }
    }
    let first_dir = dirs
        .first()
        .map(|dir| dir.display().to_string())
        .unwrap_or_else(|| "models".to_string());
    Err(EmbedError::WeightsNotFound {
        model: model.name().to_string(),
        searched: searched.join("\n"),
        hint: format!(
            "put the {} weights ({} layout, safetensors or PyTorch .pth) at {first_dir}/{}.safetensors, \
             set WTB_MODELS_DIR to the folder holding them, or pass --weights PATH",
            model.name(),
            model.layouts().join(" or "),
            model.name()
        ),
    })
}

#[cfg(feature = "hub")]
fn download_from_hub(repo: &str) -> Result<PathBuf, String> {
    if std::env::var_os("HF_HUB_OFFLINE").is_some_and(|v| v == "1") {
        return Err("HF_HUB_OFFLINE=1".to_string());
    }
    let api = hf_hub::api::sync::Api::new().map_err(|e| e.to_string())?;
    api.model(repo.to_string())
        .get("model.safetensors")
        .map_err(|e| e.to_string())
}

#[cfg(not(feature = "hub"))]
fn download_from_hub(_repo: &str) -> Result<PathBuf, String> {
    Err("built without the `hub` feature".to_string())
}

/// The sha256 of a file, as lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String, EmbedError> {
    let io = |source| EmbedError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = file.read(&mut buffer).map_err(io)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Opens a safetensors or `.pth` file as a `VarBuilder` presenting the key layout the model
/// code uses (torchvision, or lukemelas for EfficientNet-Lite0), renaming timm keys when the
/// file has timm's layout.
pub(crate) fn open_var_builder(
    model: ModelKind,
    path: &Path,
    device: &Device,
) -> Result<VarBuilder<'static>, EmbedError> {
    let weights_error = |source| EmbedError::Weights {
        path: path.to_path_buf(),
        source,
    };
    let is_pth = path
        .extension()
        .and_then(|ext| ext.to_str())
        .is_some_and(|ext| matches!(ext, "pth" | "pt" | "bin"));
    let vb = if is_pth {
        VarBuilder::from_pth(path, DType::F32, device).map_err(weights_error)?
    } else {
        // SAFETY: the file is mapped read-only; like every reader of memory-mapped files we
        // rely on it not being truncated while the model loads (tensors are copied out).
        unsafe { VarBuilder::from_mmaped_safetensors(&[path], DType::F32, device) }
            .map_err(weights_error)?
    };
    let (native, timm) = match model {
        ModelKind::MobileNetV2 => ("features.0.0.weight", Some("conv_stem.weight")),
        ModelKind::EfficientNetLite0 => ("_conv_stem.weight", None),
        // timm's ResNet50 and VGG16 feature keys are torchvision's.
        ModelKind::ResNet50 => ("conv1.weight", None),
        ModelKind::Vgg16 => ("features.0.weight", None),
    };
    if vb.contains_tensor(native) {
        return Ok(vb);
    }
    if let Some(timm) = timm {
        if vb.contains_tensor(timm) {
            return Ok(vb.rename_f(mobilenet_v2::timm_name));
        }
    }
    Err(EmbedError::UnknownLayout {
        path: path.to_path_buf(),
        model: model.name().to_string(),
        detail: match timm {
            Some(timm) => format!(
                "found neither {native} ({}) nor {timm} (timm)",
                model.layouts()[0]
            ),
            None => format!("no tensor {native} ({} layout)", model.layouts().join("/")),
        },
    })
}

/// Deterministic synthetic weights, generated on request from each tensor's name and shape by
/// the recipe of `shared/golden/README.md` (FNV-1a of the name, SplitMix64, seed 1), so that
/// ResNet50 and VGG16 can be checked against torchvision without real weights.
pub(crate) struct SyntheticWeights;

const SYNTHETIC_SEED: u64 = 1;

fn fnv1a64(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

/// `n` values of the recipe's uniform stream for `name` and `seed`, in [0, 1).
pub(crate) fn stream_u(name: &str, seed: u64, n: usize) -> Vec<f64> {
    let mut state = seed ^ fnv1a64(name);
    (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9e3779b97f4a7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
            z ^= z >> 31;
            (z >> 40) as f64 / 16777216.0
        })
        .collect()
}

/// The recipe's value of every element of tensor `name` with `shape`.
pub(crate) fn synthetic_values(name: &str, shape: &[usize]) -> candle_core::Result<Vec<f32>> {
    let n = shape.iter().product();
    let u = stream_u(name, SYNTHETIC_SEED, n);
    let map: Box<dyn Fn(f64) -> f64> = if name.ends_with(".weight") {
        match shape.len() {
            4 => {
                let fan_in = (shape[1] * shape[2] * shape[3]) as f64;
                Box::new(move |u| (2.0 * u - 1.0) * (6.0 / fan_in).sqrt())
            }
            2 => {
                let fan_in = shape[1] as f64;
                Box::new(move |u| (2.0 * u - 1.0) * (3.0 / fan_in).sqrt())
            }
            1 if name.ends_with(".bn3.weight") => Box::new(|u| 0.2 + 0.1 * u),
            1 => Box::new(|u| 1.0 + 0.2 * (u - 0.5)),
            _ => candle_core::bail!("synthetic weights: no recipe for {name} with shape {shape:?}"),
        }
    } else if name.ends_with(".bias") || name.ends_with(".running_mean") {
        Box::new(|u| 0.1 * (2.0 * u - 1.0))
    } else if name.ends_with(".running_var") {
        Box::new(|u| 0.5 + u)
    } else {
        candle_core::bail!("synthetic weights: no recipe for {name}")
    };
    Ok(u.into_iter().map(|u| map(u) as f32).collect())
}

impl SimpleBackend for SyntheticWeights {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let values = synthetic_values(name, s.dims())?;
        Tensor::from_vec(values, s, dev)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("synthetic weights need a shape for {name}")
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipe_matches_the_golden_readme_test_vectors() {
        assert_eq!(fnv1a64(""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64("a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64("foobar"), 0x85944171f73967e8);
        assert_eq!(fnv1a64("conv1.weight"), 0x69a29a2cee47d254);
        let conv1 = synthetic_values("conv1.weight", &[64, 3, 7, 7]).unwrap();
        let expected = [
            -0.17180079019361386f64,
            0.07766313073014078,
            -0.06636303079827452,
        ];
        for (got, want) in conv1.iter().zip(expected) {
            assert_eq!(*got, want as f32);
        }
        let var = synthetic_values("layer1.0.bn1.running_var", &[64]).unwrap();
        assert_eq!(
            &var[..3],
            &[
                0.9707130193710327f64 as f32,
                1.466137945652008f64 as f32,
                0.9941369891166687f64 as f32
            ]
        );
        let vgg = synthetic_values("features.0.weight", &[64, 3, 3, 3]).unwrap();
        assert_eq!(vgg[0], -0.012282603180438782f64 as f32);
        let input = stream_u("input", 2, 2);
        assert_eq!(input, vec![0.6777501702308655, 0.5612464547157288]);
    }

    #[test]
    fn unknown_tensor_kinds_are_errors() {
        assert!(synthetic_values("layer1.0.conv1.scale", &[4]).is_err());
        assert!(synthetic_values("x.weight", &[2, 2, 2]).is_err());
    }

    #[test]
    fn missing_weights_error_lists_every_place_searched() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = vec![dir.path().join("a"), dir.path().join("b")];
        let err = resolve_weights_in(ModelKind::EfficientNetLite0, None, &dirs, false, false)
            .unwrap_err()
            .to_string();
        for place in &dirs {
            assert!(err.contains(&place.display().to_string()), "{err}");
        }
        assert!(
            err.contains("efficientnet_lite0.safetensors") && err.contains("WTB_MODELS_DIR"),
            "{err}"
        );
        let err = resolve_weights_in(ModelKind::ResNet50, None, &dirs, false, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("timm/resnet50"), "{err}");
    }

    #[test]
    fn local_weights_are_found_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(b.join("vgg16.pth"), b"x").unwrap();
        let dirs = vec![a.clone(), b.clone()];
        assert_eq!(
            resolve_weights_in(ModelKind::Vgg16, None, &dirs, false, false).unwrap(),
            b.join("vgg16.pth")
        );
        std::fs::write(a.join("vgg16.safetensors"), b"x").unwrap();
        assert_eq!(
            resolve_weights_in(ModelKind::Vgg16, None, &dirs, false, false).unwrap(),
            a.join("vgg16.safetensors")
        );
        let explicit = dir.path().join("none.safetensors");
        assert!(
            resolve_weights_in(ModelKind::Vgg16, Some(&explicit), &dirs, false, false).is_err()
        );
    }

    #[test]
    fn downloads_names_are_accepted_and_ambiguity_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let models = dir.path().to_path_buf();
        let download = models.join("mobilenet_v2_torchvision_imagenet1k.safetensors");
        std::fs::write(&download, b"x").unwrap();
        // Neither another model's file nor a non-weights file counts.
        std::fs::write(models.join("mobilenet_v3_small.safetensors"), b"x").unwrap();
        std::fs::write(models.join("mobilenet_v2_notes.txt"), b"x").unwrap();
        let dirs = vec![models.clone()];
        assert_eq!(
            resolve_weights_in(ModelKind::MobileNetV2, None, &dirs, false, false).unwrap(),
            download
        );
        std::fs::write(models.join("mobilenet_v2_other.pth"), b"x").unwrap();
        let err = resolve_weights_in(ModelKind::MobileNetV2, None, &dirs, false, false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("several weights files") && err.contains("mobilenet_v2_other.pth"),
            "{err}"
        );
        // The exact name wins over download names.
        std::fs::write(models.join("mobilenet_v2.safetensors"), b"x").unwrap();
        assert_eq!(
            resolve_weights_in(ModelKind::MobileNetV2, None, &dirs, false, false).unwrap(),
            models.join("mobilenet_v2.safetensors")
        );
    }

    #[test]
    fn the_shipped_weights_are_the_last_resort_for_mobilenet_v2() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = vec![dir.path().join("empty")];
        assert_eq!(
            resolve_weights_in(ModelKind::MobileNetV2, None, &dirs, false, true).unwrap(),
            Path::new(SHIPPED_MOBILENET_V2)
        );
        // Only MobileNetV2 ships.
        assert!(
            resolve_weights_in(ModelKind::EfficientNetLite0, None, &dirs, false, true).is_err()
        );
    }
}
