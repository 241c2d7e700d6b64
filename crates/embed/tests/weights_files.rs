//! Weight files: the timm key layout, PyTorch `.pth` files, and missing or misshapen tensors,
//! checked against the torchvision MobileNetV2 safetensors of `shared/models`.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use candle_core::{Device, Tensor};
use wtb_embed::{EmbedError, Embedder, EmbedderConfig, ModelKind};

use wtb_testdata::shared_path as shared_file;

const MOBILENET: &str = "models/mobilenet_v2_torchvision_imagenet1k.safetensors";

fn embed_cat(weights: &Path) -> Result<Vec<Vec<f32>>, EmbedError> {
    let mut config = EmbedderConfig::new(ModelKind::MobileNetV2);
    config.weights = Some(weights.to_path_buf());
    let embedder = Embedder::load(&config)?;
    let image = image::RgbImage::from_fn(120, 90, |x, y| {
        image::Rgb([(x * 2) as u8, (y * 2) as u8, 90])
    });
    embedder.embed_images(&[image])
}

/// torchvision key → timm `mobilenetv2_100` key, written independently of the crate's mapping.
fn timm_key(key: &str) -> String {
    let counts = [1, 2, 3, 4, 3, 3, 1];
    let parts: Vec<&str> = key.split('.').collect();
    if parts[0] == "classifier" {
        return format!("classifier.{}", parts[2]);
    }
    let index: usize = parts[1].parse().unwrap();
    let param = parts[parts.len() - 1];
    if index == 0 {
        return format!(
            "{}.{param}",
            if parts[2] == "0" { "conv_stem" } else { "bn1" }
        );
    }
    if index == 18 {
        return format!(
            "{}.{param}",
            if parts[2] == "0" { "conv_head" } else { "bn2" }
        );
    }
    let (mut stage, mut block) = (0, index - 1);
    while block >= counts[stage] {
        block -= counts[stage];
        stage += 1;
    }
    let module = parts[3..parts.len() - 1].join(".");
    let name = match (stage == 0, module.as_str()) {
        (true, "0.0") => "conv_dw",
        (true, "0.1") => "bn1",
        (true, "1") => "conv_pw",
        (true, "2") => "bn2",
        (false, "0.0") => "conv_pw",
        (false, "0.1") => "bn1",
        (false, "1.0") => "conv_dw",
        (false, "1.1") => "bn2",
        (false, "2") => "conv_pwl",
        (false, "3") => "bn3",
        _ => panic!("unexpected key {key}"),
    };
    format!("blocks.{stage}.{block}.{name}.{param}")
}

fn rewrite(
    source: &Path,
    target: &Path,
    edit: impl Fn(HashMap<String, Tensor>) -> HashMap<String, Tensor>,
) {
    let tensors = candle_core::safetensors::load(source, &Device::Cpu).unwrap();
    candle_core::safetensors::save(&edit(tensors), target).unwrap();
}

#[test]
fn timm_layout_gives_the_same_embeddings_as_torchvision() {
    let Some(weights) = shared_file(MOBILENET) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let timm = dir.path().join("timm.safetensors");
    rewrite(&weights, &timm, |tensors| {
        tensors
            .into_iter()
            .map(|(k, v)| (timm_key(&k), v))
            .collect()
    });
    let want = embed_cat(&weights).unwrap();
    let got = embed_cat(&timm).unwrap();
    assert_eq!(got, want);
}

#[test]
fn missing_tensor_is_an_error_naming_it() {
    let Some(weights) = shared_file(MOBILENET) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.safetensors");
    rewrite(&weights, &broken, |mut tensors| {
        tensors.remove("features.5.conv.1.1.running_var");
        tensors
    });
    let err = embed_cat(&broken).unwrap_err().to_string();
    assert!(err.contains("features.5.conv.1.1.running_var"), "{err}");
}

#[test]
fn misshapen_tensor_is_an_error_naming_it() {
    let Some(weights) = shared_file(MOBILENET) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.safetensors");
    rewrite(&weights, &broken, |mut tensors| {
        tensors.insert(
            "features.3.conv.2.weight".into(),
            Tensor::zeros((24, 144, 3, 1), candle_core::DType::F32, &Device::Cpu).unwrap(),
        );
        tensors
    });
    let err = embed_cat(&broken).unwrap_err().to_string();
    assert!(err.contains("features.3.conv.2.weight"), "{err}");
}

#[test]
fn unrecognised_layout_is_an_error() {
    let Some(weights) = shared_file("models/efficientnet_lite0_imagenet1k.safetensors") else {
        return;
    };
    let err = embed_cat(&weights).unwrap_err().to_string();
    assert!(
        err.contains("layout") && err.contains("features.0.0.weight"),
        "{err}"
    );
}

/// Writes the safetensors tensors as a PyTorch zip checkpoint (`archive/data.pkl` plus one
/// storage file per tensor), with a pickle built by the standard library, no torch needed.
const WRITE_PTH: &str = r#"
import collections, json, pickle, struct, sys, types, zipfile
src, dst = sys.argv[1], sys.argv[2]
raw = open(src, "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
header = json.loads(raw[8:8 + n])
torch = types.ModuleType("torch"); utils = types.ModuleType("torch._utils")
sys.modules["torch"] = torch; sys.modules["torch._utils"] = utils
class FloatStorage: pass
FloatStorage.__module__ = "torch"; torch.FloatStorage = FloatStorage
def _rebuild_tensor_v2(*args): pass
_rebuild_tensor_v2.__module__ = "torch._utils"; utils._rebuild_tensor_v2 = _rebuild_tensor_v2
class Storage:
    def __init__(self, key, numel): self.key, self.numel = key, numel
class Tensor:
    def __init__(self, key, shape): self.key, self.shape = key, shape
    def __reduce__(self):
        stride, acc = [], 1
        for d in reversed(self.shape): stride.insert(0, acc); acc *= d
        return (_rebuild_tensor_v2, (Storage(self.key, acc), 0, tuple(self.shape), tuple(stride), False, collections.OrderedDict()))
class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage): return ("storage", FloatStorage, obj.key, "cpu", obj.numel)
        return None
state, blobs = collections.OrderedDict(), {}
for i, (name, info) in enumerate(sorted((k, v) for k, v in header.items() if k != "__metadata__")):
    assert info["dtype"] == "F32"
    start, end = info["data_offsets"]
    blobs[str(i)] = raw[8 + n + start: 8 + n + end]
    state[name] = Tensor(str(i), info["shape"])
import io
buf = io.BytesIO(); Pickler(buf, protocol=2).dump(state)
with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as z:
    z.writestr("archive/data.pkl", buf.getvalue())
    for key, blob in blobs.items(): z.writestr(f"archive/data/{key}", blob)
    z.writestr("archive/version", "3\n")
"#;

#[test]
fn pytorch_pth_gives_the_same_embeddings_as_safetensors() {
    let Some(weights) = shared_file(MOBILENET) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pth = dir.path().join("mobilenet_v2.pth");
    let status = Command::new("python3")
        .arg("-c")
        .arg(WRITE_PTH)
        .arg(&weights)
        .arg(&pth)
        .status();
    match status {
        Ok(status) if status.success() => {}
        other => {
            eprintln!("skipping: python3 could not write a .pth ({other:?})");
            return;
        }
    }
    let want = embed_cat(&weights).unwrap();
    let got = embed_cat(&pth).unwrap();
    assert_eq!(got, want);
}
