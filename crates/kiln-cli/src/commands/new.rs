//! `kiln new step`: a step folder to start from, in Rust or Python, and the lines that add it
//! to a pipeline.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};

/// Start something new from a template.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Write a wasm step to start from: a Rust crate or a Python module, with its params
    /// declared
    ///
    /// The folder (`DIR`, or `./NAME`) gets a small working step: it reads input `data`,
    /// returns output `summary` and reports metric `lines`, with one declared param,
    /// `label`. kiln prints the step's entry for a pipeline's `steps:`, with its build recipe
    /// (the paths in it are relative to the pipeline's folder: the current one unless
    /// `--pipeline` says which file it is for).
    ///
    /// The step depends on kiln's SDK (`sdk/rust/kiln-step` or `sdk/python/kiln_step.py` in
    /// kiln's repository): `--sdk` gives its folder, otherwise kiln looks in the folders above
    /// DIR and above the current one, then in the clone kiln was built from.
    Step(StepArgs),
}

/// `kiln new step`.
#[derive(Debug, clap::Args)]
struct StepArgs {
    /// The step's name, as the pipeline will call it (lowercase letters, digits, `_`, `-`)
    #[arg(value_name = "NAME")]
    name: String,
    /// A Rust crate (`cargo build --target wasm32-wasip2`)
    #[arg(long, conflicts_with = "python", required_unless_present = "python")]
    rust: bool,
    /// A Python module (componentize-py, through `kiln_step.py build`)
    #[arg(long)]
    python: bool,
    /// Where to write the step [default: ./NAME]
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// The SDK's folder: `sdk/rust/kiln-step` or `sdk/python` of a kiln checkout
    #[arg(long, value_name = "DIR")]
    sdk: Option<PathBuf>,
    /// The pipeline file the step is for: the printed paths are relative to its folder
    #[arg(long, value_name = "FILE")]
    pipeline: Option<PathBuf>,
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Step(args) => new_step(&args),
    }
}

/// The two kinds of step there are templates for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Language {
    Rust,
    Python,
}

impl Language {
    fn sdk_in_checkout(self) -> &'static str {
        match self {
            Self::Rust => "sdk/rust/kiln-step",
            Self::Python => "sdk/python",
        }
    }

    fn sdk_name(self) -> &'static str {
        match self {
            Self::Rust => "the Rust SDK (the `kiln-step` crate)",
            Self::Python => "the Python SDK (`kiln_step.py`)",
        }
    }

    /// Whether `dir` holds this language's SDK.
    fn is_sdk(self, dir: &Path) -> bool {
        match self {
            Self::Rust => std::fs::read_to_string(dir.join("Cargo.toml"))
                .is_ok_and(|toml| toml.contains("name = \"kiln-step\"")),
            Self::Python => dir.join("kiln_step.py").is_file(),
        }
    }
}

fn new_step(args: &StepArgs) -> anyhow::Result<ExitCode> {
    let language = if args.rust {
        Language::Rust
    } else {
        Language::Python
    };
    kiln_spec::StepName::new(args.name.as_str()).map_err(|e| anyhow::anyhow!(e))?;
    let cwd = std::env::current_dir().context("cannot read the current folder")?;
    let dir = cwd.join(
        args.dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(&args.name)),
    );
    if std::fs::read_dir(&dir).is_ok_and(|mut entries| entries.next().is_some()) {
        bail!(
            "{} already exists and is not empty: give another NAME or --dir",
            dir.display()
        );
    }
    if dir.exists() && !dir.is_dir() {
        bail!("{} exists and is not a folder", dir.display());
    }
    let parent = dir
        .parent()
        .with_context(|| format!("{} has no parent folder", dir.display()))?;
    std::fs::create_dir_all(parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    let parent = std::fs::canonicalize(parent)?;
    let dir = parent.join(dir.file_name().context("the folder has no name")?);

    let sdk = match &args.sdk {
        Some(sdk) => {
            let sdk = std::fs::canonicalize(sdk)
                .with_context(|| format!("--sdk {}: cannot read it", sdk.display()))?;
            if !language.is_sdk(&sdk) {
                bail!(
                    "--sdk {}: not {} (it is `{}` in kiln's repository)",
                    sdk.display(),
                    language.sdk_name(),
                    language.sdk_in_checkout()
                );
            }
            sdk
        }
        None => find_sdk(language, &[&parent, &cwd], built_from()).with_context(|| {
            format!(
                "cannot find {} in the folders above {} or above the current one: give \
                     `--sdk DIR` (`{}` in a clone of kiln's repository)",
                language.sdk_name(),
                dir.display(),
                language.sdk_in_checkout()
            )
        })?,
    };
    let base = match &args.pipeline {
        Some(file) => {
            let folder = cwd.join(file);
            let folder = folder.parent().unwrap_or(&cwd);
            std::fs::canonicalize(folder)
                .with_context(|| format!("--pipeline: cannot read {}", folder.display()))?
        }
        None => cwd.clone(),
    };

    let name = args.name.as_str();
    let snake = name.replace('-', "_");
    let source = relative(&dir, &base);
    let (files, entry) = match language {
        Language::Rust => {
            let sdk_rel = relative(&sdk, &dir);
            let ty = camel(name);
            let files = vec![
                (
                    "Cargo.toml".to_owned(),
                    fill(include_str!("new/rust-Cargo.toml"), name, &snake, &ty)
                        .replace("@SDK@", &sdk_rel),
                ),
                (
                    "src/lib.rs".to_owned(),
                    fill(include_str!("new/rust-lib.rs"), name, &snake, &ty),
                ),
                (
                    ".gitignore".to_owned(),
                    include_str!("new/rust-gitignore").to_owned(),
                ),
            ];
            let recipe = format!(
                "      source: {source}\n      \
                 command: cargo build --release --target wasm32-wasip2\n      \
                 artifact: target/wasm32-wasip2/release/{snake}.wasm\n      \
                 watch: [{sdk_rel}]\n"
            );
            (files, recipe)
        }
        Language::Python => {
            let wit = find_wit(&sdk).with_context(|| {
                format!(
                    "{} has no kiln step world next to it (`wit/step.wit` two folders up, as \
                     in kiln's repository, or in the same folder)",
                    sdk.display()
                )
            })?;
            let script = relative(&sdk.join("kiln_step.py"), &dir);
            let wit_rel = relative(&wit, &dir);
            let sdk_rel = relative(&sdk, &dir);
            let files = vec![
                (
                    format!("{snake}.py"),
                    fill(include_str!("new/python-step.py"), name, &snake, ""),
                ),
                (
                    ".gitignore".to_owned(),
                    include_str!("new/python-gitignore").to_owned(),
                ),
            ];
            let recipe = format!(
                "      source: {source}\n      \
                 command: python3 {script} build {snake} --wit {wit_rel} -o target/{snake}.wasm\n      \
                 artifact: target/{snake}.wasm\n      \
                 watch: [{sdk_rel}, {wit_rel}]\n"
            );
            (files, recipe)
        }
    };
    write_folder(&dir, &files)?;
    if !dir.starts_with(&base) {
        eprintln!(
            "warning: {} is not inside {}: a step's source folder must be inside its \
             pipeline's folder",
            dir.display(),
            base.display()
        );
    }

    let shown = relative(&dir, &cwd);
    let listed: Vec<&str> = files.iter().map(|(path, _)| path.as_str()).collect();
    eprintln!(
        "created {shown}/ ({}), with {} at {}",
        listed.join(", "),
        language.sdk_name(),
        relative(&sdk, &cwd)
    );
    eprintln!(
        "add it under `steps:` in {} (and point `data` at a file of yours or at another \
         step's output, such as `ingest.table`):",
        args.pipeline.as_ref().map_or_else(
            || "a pipeline in this folder".to_owned(),
            |p| p.display().to_string()
        )
    );
    print!(
        "  {name}:\n    wasm:\n{entry}    inputs:\n      data: ./data.txt\n    with:\n      \
         label: data\n    outputs: [summary]\n"
    );
    Ok(ExitCode::SUCCESS)
}

/// A template with its placeholders filled: `@NAME@` (the step), `@LIB@` (the Rust library
/// name), `@TYPE@` (the Rust type).
fn fill(template: &str, name: &str, snake: &str, ty: &str) -> String {
    template
        .replace("@NAME@", name)
        .replace("@LIB@", snake)
        .replace("@TYPE@", ty)
}

/// `clean-rows` → `CleanRows`: the step's type in Rust.
fn camel(name: &str) -> String {
    let mut out = String::new();
    for part in name.split(['-', '_']).filter(|p| !p.is_empty()) {
        let mut chars = part.chars();
        if let Some(first) = chars.next() {
            out.push(first.to_ascii_uppercase());
            out.extend(chars);
        }
    }
    // Step names start with a letter, so `out` is a valid identifier.
    out
}

/// The clone of kiln's repository this binary was built from, if it is still there.
fn built_from() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::fs::canonicalize(root).ok()
}

/// The SDK in `sdk/...` of the first folder at or above one of `starts` that has it, else in
/// the clone kiln was built from.
fn find_sdk(language: Language, starts: &[&Path], clone: Option<PathBuf>) -> Option<PathBuf> {
    let candidates = starts
        .iter()
        .flat_map(|start| start.ancestors())
        .map(Path::to_path_buf)
        .chain(clone);
    for folder in candidates {
        let sdk = folder.join(language.sdk_in_checkout());
        if language.is_sdk(&sdk) {
            return std::fs::canonicalize(sdk).ok();
        }
    }
    None
}

/// The WIT folder for the Python SDK at `sdk`: `../../wit` in a checkout, else `wit` beside it.
fn find_wit(sdk: &Path) -> Option<PathBuf> {
    [sdk.join("../../wit"), sdk.join("wit")]
        .into_iter()
        .find(|wit| wit.join("step.wit").is_file())
        .and_then(|wit| std::fs::canonicalize(wit).ok())
}

/// `path` relative to `base` (both absolute), `.` for the same folder; absolute when the two
/// have nothing but the root in common (`../../../usr/...` helps nobody).
fn relative(path: &Path, base: &Path) -> String {
    fn top(p: &Path) -> Option<std::path::Component<'_>> {
        p.components().nth(1)
    }
    if top(path) != top(base) {
        return path.display().to_string();
    }
    match pathdiff::diff_paths(path, base) {
        Some(p) if p.as_os_str().is_empty() => ".".to_owned(),
        Some(p) => p.display().to_string(),
        None => path.display().to_string(),
    }
}

/// Writes `files` into a new folder beside `dir`, then moves it into place: `dir` is either
/// complete or not there.
fn write_folder(dir: &Path, files: &[(String, String)]) -> anyhow::Result<()> {
    let parent = dir.parent().context("the folder has no parent")?;
    let staging = tempfile::Builder::new()
        .prefix(".kiln-new-")
        .tempdir_in(parent)
        .with_context(|| format!("cannot write in {}", parent.display()))?;
    for (path, text) in files {
        let path = staging.path().join(path);
        if let Some(folder) = path.parent() {
            std::fs::create_dir_all(folder)?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    // An empty folder at `dir` is replaced; `rename` refuses a folder that is not empty.
    std::fs::rename(staging.path(), dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    // The staging folder is now `dir`: nothing is left to remove.
    std::mem::forget(staging);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_types_and_modules() {
        assert_eq!(camel("clean-rows"), "CleanRows");
        assert_eq!(camel("zscore"), "Zscore");
        assert_eq!(camel("a_b-2c"), "AB2c");
    }

    #[test]
    fn the_sdk_is_found_above_a_folder_or_in_the_clone() {
        let tree = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(tree.path()).unwrap();
        let rust = root.join("kiln/sdk/rust/kiln-step");
        std::fs::create_dir_all(&rust).unwrap();
        std::fs::write(rust.join("Cargo.toml"), "[package]\nname = \"kiln-step\"\n").unwrap();
        let deep = root.join("kiln/examples/mine/steps");
        std::fs::create_dir_all(&deep).unwrap();
        let elsewhere = root.join("elsewhere");
        std::fs::create_dir_all(&elsewhere).unwrap();

        assert_eq!(find_sdk(Language::Rust, &[&deep], None), Some(rust.clone()));
        // The second start is looked at when the first has nothing above it.
        assert_eq!(
            find_sdk(Language::Rust, &[&elsewhere, &deep], None),
            Some(rust.clone())
        );
        assert_eq!(find_sdk(Language::Python, &[&deep], None), None);
        assert_eq!(find_sdk(Language::Rust, &[&elsewhere], None), None);
        assert_eq!(
            find_sdk(Language::Rust, &[&elsewhere], Some(root.join("kiln"))),
            Some(rust)
        );
        // A folder named like the SDK that is some other crate is not it.
        let other = root.join("other/sdk/rust/kiln-step");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("Cargo.toml"), "[package]\nname = \"mine\"\n").unwrap();
        assert_eq!(find_sdk(Language::Rust, &[&root.join("other")], None), None);
    }

    #[test]
    fn paths_are_relative() {
        assert_eq!(relative(Path::new("/a/b/c"), Path::new("/a/x")), "../b/c");
        assert_eq!(relative(Path::new("/a"), Path::new("/a")), ".");
        assert_eq!(
            relative(Path::new("/usr/sdk"), Path::new("/home/me")),
            "/usr/sdk"
        );
    }
}
