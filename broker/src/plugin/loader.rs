//! Opening a plugin library and checking it before anything of it runs.
//!
//! [`open`] copies the library to a content-addressed path (`<cache>/<name>-<sha256>.so`) and
//! opens that copy, so a library rebuilt at its install path is really picked up (the dynamic
//! loader would otherwise hand back the old mapping of the same path) and overwriting the
//! installed file can never touch a mapped one. Libraries are never unmapped: code of an
//! unloaded plugin may still be on a stack somewhere, and abi_stable leaks them by design.
//!
//! The checks, each failing with one line that names the fix: the file is a well-formed shared
//! library for this machine whose every segment and section lies inside the file
//! ([`check_library`]: a truncated copy would otherwise be mapped past its end and kill the
//! broker with SIGBUS on first touch), the dynamic loader accepts it,
//! it exports a plugin root module, its `plugin-api` crate version is compatible, its type
//! layouts match this broker's, its API version is not newer than the broker's, and it was
//! built with `panic = "unwind"`.

use std::path::{Path, PathBuf};

use abi_stable::library::{lib_header_from_path, LibraryError};
use plugin_api::{PluginModRef, API_VERSION};
use sha2::{Digest, Sha256};

/// Why a plugin library cannot be used. Each variant displays as one actionable line.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// No library for that name in the plugin directory.
    #[error("plugin {name} not found: no {}", path.display())]
    NotFound {
        /// Plugin name.
        name: String,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// Reading or copying the file failed.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not a loadable shared library.
    #[error("{} is not a loadable plugin library: {detail}", path.display())]
    NotALibrary {
        /// The file.
        path: PathBuf,
        /// What the dynamic loader said.
        detail: String,
    },
    /// The library has no plugin root module.
    #[error("{} exports no broker plugin: add `plugin_api::export_plugin!(YourPlugin);` to the crate root and build it as a cdylib", path.display())]
    MissingExport {
        /// The file.
        path: PathBuf,
    },
    /// Built against an incompatible `plugin-api` crate version.
    #[error("ABI mismatch: plugin built against plugin-api {plugin}, this broker uses plugin-api {broker}; rebuild the plugin against plugin-api {broker}")]
    VersionMismatch {
        /// Version the plugin was built with.
        plugin: String,
        /// Version the broker uses.
        broker: String,
    },
    /// A shared type's layout differs.
    #[error("ABI mismatch: type layout differs from this broker's plugin-api ({summary}); rebuild the plugin against the broker's plugin-api")]
    LayoutMismatch {
        /// The last lines of abi_stable's report.
        summary: String,
    },
    /// The plugin speaks a newer plugin API than the broker.
    #[error("plugin built for plugin API v{plugin}, this broker speaks v{broker}; upgrade the broker or build the plugin against an older plugin-api")]
    NewerApi {
        /// Plugin's API version.
        plugin: u32,
        /// Broker's API version.
        broker: u32,
    },
    /// Built with `panic = "abort"`.
    #[error("plugin was built with panic = \"abort\"; a panic in it would abort the broker: remove `panic = \"abort\"` from its Cargo profile and rebuild")]
    PanicAbort,
    /// The library's plugin name is not the requested one.
    #[error("{} declares plugin name {declared:?}, not {requested:?}", path.display())]
    NameMismatch {
        /// The file.
        path: PathBuf,
        /// Its declared name.
        declared: String,
        /// The requested name.
        requested: String,
    },
    /// Anything else abi_stable reports.
    #[error("cannot load plugin library: {0}")]
    Other(String),
}

/// The library file name for a plugin on this platform.
pub fn library_file_name(name: &str) -> String {
    if cfg!(target_os = "windows") {
        format!("{name}.dll")
    } else if cfg!(target_os = "macos") {
        format!("lib{name}.dylib")
    } else {
        format!("lib{name}.so")
    }
}

/// A checked, opened plugin library.
pub struct Opened {
    /// Its root module.
    pub module: PluginModRef,
    /// The content-addressed copy that was opened.
    pub cache_path: PathBuf,
    /// sha256 of the file, hex.
    pub sha256: String,
}

/// Opens and checks the library at `path` through a copy in `cache_dir`. Blocking.
///
/// The file is copied first and everything after looks at the copy (what is checked is what is
/// mapped, even if the original is rebuilt meanwhile). Nothing reads the whole library into
/// memory: it is hashed in chunks and parsed through a read cache, so a 30 MB library with
/// debug information does not leave 30 MB in the broker's heap.
pub fn open(name: &str, path: &Path, cache_dir: &Path) -> Result<Opened, LoadError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| LoadError::Io { path, source }
    };
    if !path.exists() {
        return Err(LoadError::NotFound {
            name: name.to_owned(),
            path: path.to_owned(),
        });
    }
    std::fs::create_dir_all(cache_dir).map_err(io(cache_dir))?;
    let tmp = cache_dir.join(format!(".{name}-{}.tmp", std::process::id()));
    let opened = copy_check_and_hash(path, &tmp);
    let (sha256, ext) = match opened {
        Ok(sha) => (
            sha,
            path.extension().and_then(|e| e.to_str()).unwrap_or("so"),
        ),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    let cache_path = cache_dir.join(format!("{name}-{}.{ext}", &sha256[..16]));
    if cache_path.exists() {
        let _ = std::fs::remove_file(&tmp);
    } else {
        std::fs::rename(&tmp, &cache_path).map_err(io(&cache_path))?;
    }
    let header = lib_header_from_path(&cache_path).map_err(|e| classify(e, path))?;
    let module = check_root_module(header, path)?;
    let api_version = module.api_version();
    if api_version > API_VERSION {
        return Err(LoadError::NewerApi {
            plugin: api_version,
            broker: API_VERSION,
        });
    }
    if !module.panic_unwind() {
        return Err(LoadError::PanicAbort);
    }
    Ok(Opened {
        module,
        cache_path,
        sha256,
    })
}

/// The versioning rule of the plugin API, applied to an opened library: its `plugin-api`
/// version must be on the broker's release line (same major; for 0.x, same minor), and its
/// types must be a layout-compatible prefix of the broker's.
///
/// abi_stable's own check (`init_root_module`) is written for a library at least as new as its
/// loader: it refuses a library whose prefix types (the `Host` and `PluginInstance` vtables,
/// the root module) are *shorter* than the loader's. Plugins built against an older release of
/// the line are exactly that, and they are sound to run: the broker reads the fields they lack
/// through accessors that see the plugin's own field count and fall back to the trait's
/// default, and the plugin reads only the fields it knows of the broker's longer `Host`. So
/// for a library as old as the broker or older, the check runs the other way round — the
/// library's layout as the interface, the broker's as the implementation — which accepts
/// exactly the libraries whose every type equals the broker's except for prefix types that
/// end early. A library newer than the broker is checked as abi_stable does (its longer
/// vtables are fine), and then refused by its API version in [`open`].
fn check_root_module(
    header: &'static abi_stable::library::LibHeader,
    path: &Path,
) -> Result<PluginModRef, LoadError> {
    use abi_stable::abi_stability::abi_checking::check_layout_compatibility;
    use abi_stable::library::RootModule;
    use abi_stable::sabi_types::VersionNumber;
    use abi_stable::std_types::RBoxError;
    use abi_stable::StableAbi;

    let broker =
        VersionNumber::new(PluginModRef::VERSION_STRINGS).map_err(|e| classify(e.into(), path))?;
    let plugin =
        VersionNumber::new(header.version_strings()).map_err(|e| classify(e.into(), path))?;
    let same_line =
        plugin.major == broker.major && (broker.major != 0 || plugin.minor == broker.minor);
    if !same_line {
        return Err(LoadError::VersionMismatch {
            plugin: plugin.to_string(),
            broker: broker.to_string(),
        });
    }
    if let Some(layout) = header.layout() {
        let older_or_same = (plugin.minor, plugin.patch) <= (broker.minor, broker.patch);
        if older_or_same {
            // The report's "expected" is the library's here: swap the roles back.
            check_layout_compatibility(layout, PluginModRef::LAYOUT).map_err(|e| {
                let mut report = LayoutReport::parse(&e.to_string());
                std::mem::swap(&mut report.expected, &mut report.found);
                LoadError::LayoutMismatch {
                    summary: report.summary(),
                }
            })?;
        } else {
            check_layout_compatibility(PluginModRef::LAYOUT, layout).map_err(|e| {
                classify(LibraryError::AbiInstability(RBoxError::from_fmt(&e)), path)
            })?;
        }
    }
    // SAFETY: the layout was checked above, by the rule this function's doc explains.
    unsafe { header.unchecked_layout::<PluginModRef>() }
        .map_err(|e| classify(e.into_library_error::<PluginModRef>(), path))
}

/// Checks that `bytes` are a complete shared library for this machine before the dynamic
/// loader maps them: the headers parse, the file is a dynamic library, it is built for this
/// architecture, and every segment and section it declares lies within the file.
pub fn check_library(bytes: &[u8]) -> Result<(), String> {
    check_library_data(bytes, bytes.len() as u64)
}

/// Copies `path` to `tmp`, checks the copy ([`check_library`]) and returns its sha256 (hex),
/// reading it in chunks.
fn copy_check_and_hash(path: &Path, tmp: &Path) -> Result<String, LoadError> {
    use std::io::Read;
    let io = |p: &Path| {
        let p = p.to_owned();
        move |source| LoadError::Io { path: p, source }
    };
    std::fs::copy(path, tmp).map_err(io(path))?;
    let mut file = std::fs::File::open(tmp).map_err(io(tmp))?;
    let len = file.metadata().map_err(io(tmp))?.len();
    let cache = object::ReadCache::new(&file);
    check_library_data(&cache, len).map_err(|detail| LoadError::NotALibrary {
        path: path.to_owned(),
        detail,
    })?;
    drop(cache);
    std::io::Seek::rewind(&mut file).map_err(io(tmp))?;
    let mut hasher = Sha256::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut chunk).map_err(io(tmp))?;
        if n == 0 {
            break;
        }
        hasher.update(&chunk[..n]);
    }
    Ok(crate::hex::encode(&hasher.finalize()))
}

/// [`check_library`] over any readable data of `len` bytes.
fn check_library_data<'a, R: object::ReadRef<'a>>(data: R, len: u64) -> Result<(), String> {
    use object::{Object, ObjectKind, ObjectSection, ObjectSegment};
    let file = object::File::parse(data)
        .map_err(|e| format!("truncated or damaged, or not a shared library ({e})"))?;
    if file.kind() != ObjectKind::Dynamic {
        return Err(format!(
            "not a shared library (a {:?} object): build the plugin with crate-type = [\"cdylib\"]",
            file.kind()
        ));
    }
    let host = match std::env::consts::ARCH {
        "x86_64" => Some(object::Architecture::X86_64),
        "aarch64" => Some(object::Architecture::Aarch64),
        "x86" => Some(object::Architecture::I386),
        _ => None,
    };
    if host.is_some_and(|h| h != file.architecture()) {
        return Err(format!(
            "built for {:?}, this broker runs on {}",
            file.architecture(),
            std::env::consts::ARCH
        ));
    }
    let beyond = |(offset, size): (u64, u64)| offset.checked_add(size).is_none_or(|end| end > len);
    for segment in file.segments() {
        if beyond(segment.file_range()) {
            return Err(format!(
                "truncated or damaged: a segment ends past the end of the file ({len} bytes)"
            ));
        }
    }
    for section in file.sections() {
        if section.file_range().is_some_and(beyond) {
            return Err(format!(
                "truncated or damaged: section {:?} ends past the end of the file ({len} bytes)",
                section.name().unwrap_or("?")
            ));
        }
    }
    Ok(())
}

/// Turns abi_stable's (often very long) errors into one line each.
fn classify(e: LibraryError, path: &Path) -> LoadError {
    let full = e.to_string();
    tracing::debug!(path = %path.display(), report = %full, "plugin library check failed");
    match e {
        LibraryError::OpenError { err, .. } => LoadError::NotALibrary {
            path: path.to_owned(),
            detail: err.to_string(),
        },
        LibraryError::GetSymbolError { .. } => LoadError::MissingExport {
            path: path.to_owned(),
        },
        LibraryError::IncompatibleVersionNumber {
            expected_version,
            actual_version,
            ..
        } => LoadError::VersionMismatch {
            plugin: actual_version.to_string(),
            broker: expected_version.to_string(),
        },
        LibraryError::AbiInstability(_)
        | LibraryError::InvalidAbiHeader(_)
        | LibraryError::InvalidCAbi { .. } => {
            let report = LayoutReport::parse(&full);
            if report.error.contains("incompatible package versions") {
                LoadError::VersionMismatch {
                    plugin: report.found,
                    broker: report.expected,
                }
            } else {
                LoadError::LayoutMismatch {
                    summary: report.summary(),
                }
            }
        }
        LibraryError::Many(list) => match list.into_iter().next() {
            Some(first) => classify(first, path),
            None => LoadError::Other(full),
        },
        _ => LoadError::Other(one_line(&full)),
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The essentials of abi_stable's (thousands of lines long) layout report: the last error,
/// what was expected and found, and the field where they differ.
#[derive(Debug, Default)]
struct LayoutReport {
    error: String,
    expected: String,
    found: String,
    place: Option<String>,
}

impl LayoutReport {
    fn parse(full: &str) -> LayoutReport {
        let lines: Vec<&str> = full.lines().map(str::trim).collect();
        let mut r = LayoutReport::default();
        let Some(at) = lines.iter().rposition(|l| l.starts_with("Error:")) else {
            r.error = one_line(full);
            return r;
        };
        r.error = lines[at].trim_start_matches("Error:").trim().to_owned();
        let value_after = |label: &str| {
            lines[at..]
                .iter()
                .position(|l| *l == label)
                .and_then(|i| lines[at + i + 1..].iter().find(|l| !l.is_empty()))
                .map(|v| v.to_string())
                .unwrap_or_default()
        };
        r.expected = value_after("Expected:");
        r.found = value_after("Found:");
        // The field path leading to the difference: the last (field_name, type) pairs before
        // "Layout of expected type:".
        let end = lines[..at]
            .iter()
            .rposition(|l| l.starts_with("Layout of expected type"))
            .unwrap_or(at);
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        let mut field: Option<&str> = None;
        for l in &lines[..end] {
            if let Some(f) = l.strip_prefix("field_name:") {
                field = Some(f);
            } else if let (Some(t), Some(f)) = (l.strip_prefix("type:"), field.take()) {
                pairs.push((f, t));
            }
        }
        if let [.., (_, parent), (name, _)] = pairs.as_slice() {
            r.place = Some(format!("{parent}.{name}"));
        }
        r
    }

    fn summary(&self) -> String {
        let mut s = self.error.clone();
        if let Some(place) = &self.place {
            s.push_str(&format!(" in {place}"));
        }
        if !self.expected.is_empty() || !self.found.is_empty() {
            s.push_str(&format!(
                ": broker has {}, plugin has {}",
                self.expected, self.found
            ));
        }
        s
    }
}
