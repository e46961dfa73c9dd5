//! Opening images: probing the format and following backing chains.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{qcow2::Qcow2, raw::RawImage, Image, ImageError, ImageFormat};

/// Whether [`open`] opens the backing files an image names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackingMode {
    /// Open the whole chain (needed to read the virtual disk).
    #[default]
    Follow,
    /// Open only the named image (for `info`, `check`, `rebase -u`, ...).
    Ignore,
}

/// How to open an image.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageOptions {
    pub read_only: bool,
    /// The format; probed from the file when `None`.
    pub format: Option<ImageFormat>,
    pub backing: BackingMode,
}

/// The format of the file at `path`: qcow2 if it starts with qcow2's magic,
/// raw otherwise (as QEMU decides).
pub fn probe(path: &Path) -> Result<ImageFormat, ImageError> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(|source| ImageError::Open {
        path: path.to_owned(),
        source,
    })?;
    let mut magic = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match file.read(&mut magic[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ImageError::io(path, "reading the first bytes", e)),
        }
    }
    Ok(if got == 4 && magic == *b"QFI\xfb" {
        ImageFormat::Qcow2
    } else {
        ImageFormat::Raw
    })
}

/// One opened layer before it is linked to the one below.
enum Layer {
    Raw(RawImage),
    Qcow2(Box<Qcow2>),
}

impl Layer {
    fn open(path: &Path, format: ImageFormat, read_only: bool) -> Result<Self, ImageError> {
        Ok(match format {
            ImageFormat::Raw => Self::Raw(RawImage::open(path, read_only)?),
            ImageFormat::Qcow2 => Self::Qcow2(Box::new(Qcow2::open(path, read_only)?)),
        })
    }
}

/// Where a backing file name recorded in `image` points: absolute names as
/// they are, relative ones from the image's directory.
pub fn resolve_backing(image: &Path, name: &str) -> Result<PathBuf, ImageError> {
    if name.starts_with("json:") || (name.contains("://") && !name.starts_with('/')) {
        return Err(ImageError::Unsupported {
            path: image.to_owned(),
            what: format!("backing file '{name}' (protocols and json: names)"),
        });
    }
    let name = Path::new(name.strip_prefix("file:").unwrap_or(name));
    Ok(if name.is_absolute() {
        name.to_owned()
    } else {
        image.parent().unwrap_or_else(|| Path::new(".")).join(name)
    })
}

fn identity(path: &Path) -> Result<(u64, u64), ImageError> {
    let meta = std::fs::metadata(path).map_err(|source| ImageError::Open {
        path: path.to_owned(),
        source,
    })?;
    Ok((meta.dev(), meta.ino()))
}

/// Opens the image at `path` and, with [`BackingMode::Follow`], its whole
/// backing chain (read-only below the top). Loops are refused.
pub fn open(path: &Path, options: &ImageOptions) -> Result<Arc<dyn Image>, ImageError> {
    let format = match options.format {
        Some(f) => f,
        None => probe(path)?,
    };
    let mut layers = vec![Layer::open(path, format, options.read_only)?];
    let mut seen = vec![identity(path)?];
    if options.backing == BackingMode::Follow {
        while let Some(Layer::Qcow2(top)) = layers.last() {
            let Some(name) = top.backing_file_name() else {
                break;
            };
            let here = top.path().to_owned();
            let backing_path = resolve_backing(&here, &name)?;
            let wrap = |source: ImageError| ImageError::Backing {
                path: here.clone(),
                backing: name.clone(),
                source: Box::new(source),
            };
            let id = identity(&backing_path).map_err(wrap)?;
            if seen.contains(&id) {
                return Err(ImageError::BackingLoop {
                    path: here.clone(),
                    backing: backing_path,
                });
            }
            seen.push(id);
            let format = match top.backing_format_name() {
                Some(f) => f.parse::<ImageFormat>().map_err(|what| {
                    wrap(ImageError::Unsupported {
                        path: backing_path.clone(),
                        what,
                    })
                })?,
                None => probe(&backing_path).map_err(wrap)?,
            };
            let layer = Layer::open(&backing_path, format, true).map_err(wrap)?;
            layers.push(layer);
        }
    }
    // Link bottom-up.
    let mut below: Option<Arc<dyn Image>> = None;
    while let Some(layer) = layers.pop() {
        let image: Arc<dyn Image> = match layer {
            Layer::Raw(raw) => Arc::new(raw),
            Layer::Qcow2(mut q) => {
                q.set_backing(below.take());
                Arc::new(*q)
            }
        };
        below = Some(image);
    }
    below.ok_or_else(|| ImageError::Open {
        path: path.to_owned(),
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    })
}
