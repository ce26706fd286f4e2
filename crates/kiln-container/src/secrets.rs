//! Secrets for container steps: where their values come from, how a step gets them, and the
//! redaction that keeps them out of step logs.
//!
//! A plan names secrets, never their values ([`kiln_plan::SecretRef`]). The executor that runs
//! a step resolves the names where the step runs (on a laptop: `KILN_SECRET_<NAME>` in kiln's
//! environment, or a file given with `--secrets`), hands the values over as environment
//! variables or as files in a private folder that is removed when the attempt ends, and
//! replaces every occurrence of a value in the step's output with `[secret:<name>]` before the
//! output reaches the log (and so the failure message, the record and a bundle).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use aho_corasick::{AhoCorasick, MatchKind};
use kiln_engine::ExecutorError;
use kiln_plan::{ContainerPlan, PlannedStep, SecretRef, StepKind};

/// The prefix of the environment variables secrets are read from: secret `wandb-key` is
/// `KILN_SECRET_WANDB_KEY`.
pub const ENV_PREFIX: &str = "KILN_SECRET_";

/// The environment variable that holds secret `name`.
pub fn env_var(name: &str) -> String {
    let mut var = String::from(ENV_PREFIX);
    var.extend(name.chars().map(|c| {
        if c == '-' {
            '_'
        } else {
            c.to_ascii_uppercase()
        }
    }));
    var
}

/// A secret's value. Its `Debug` shows nothing of it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(String);

impl SecretValue {
    /// The value itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretValue([{} bytes])", self.0.len())
    }
}

/// Why secrets could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// The `--secrets` file or folder could not be read.
    #[error("cannot read secrets from {path}: {source}")]
    Read {
        /// The file or folder.
        path: String,
        /// What the system said.
        source: std::io::Error,
    },
    /// The file is not a YAML map of names to strings.
    #[error("{path} is not a map of secret names to values: {reason}")]
    Format {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A name or value is not usable.
    #[error("{path}: {reason}")]
    Entry {
        /// The file or folder.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

/// Where secret values come from: a `--secrets` file or folder first, then `KILN_SECRET_<NAME>`
/// variables of kiln's own environment.
#[derive(Clone, Default)]
pub struct Secrets {
    from_file: BTreeMap<String, SecretValue>,
    file: Option<PathBuf>,
    read_env: bool,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secrets")
            .field("names", &self.from_file.keys().collect::<Vec<_>>())
            .field("file", &self.file)
            .field("read_env", &self.read_env)
            .finish()
    }
}

impl Secrets {
    /// No secrets at all: a step that needs one cannot run.
    pub fn none() -> Self {
        Self::default()
    }

    /// Secrets from `KILN_SECRET_<NAME>` variables only.
    pub fn from_env() -> Self {
        Secrets {
            read_env: true,
            ..Secrets::default()
        }
    }

    /// Secrets from `KILN_SECRET_<NAME>` variables, and from `file` when given: a YAML map of
    /// names to values, or a folder with one file per secret (the file's name is the secret's,
    /// its content the value without one trailing newline), as Kubernetes and Docker mount
    /// secrets.
    pub fn load(file: Option<&Path>) -> Result<Self, SecretsError> {
        let mut secrets = Secrets::from_env();
        let Some(path) = file else {
            return Ok(secrets);
        };
        let shown = path.display().to_string();
        let read_error = |source| SecretsError::Read {
            path: shown.clone(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(read_error)?;
        let entries: Vec<(String, String)> = if meta.is_dir() {
            let mut entries = Vec::new();
            for entry in std::fs::read_dir(path).map_err(read_error)? {
                let entry = entry.map_err(read_error)?;
                let name = entry.file_name().to_string_lossy().into_owned();
                // Kubernetes' secret volumes hold `..data` links and dot folders beside the keys.
                if name.starts_with('.') || !entry.path().is_file() {
                    continue;
                }
                let bytes = std::fs::read(entry.path()).map_err(read_error)?;
                let mut value = String::from_utf8(bytes).map_err(|_| SecretsError::Entry {
                    path: shown.clone(),
                    reason: format!("secret `{name}` is not UTF-8 text"),
                })?;
                if value.ends_with('\n') {
                    value.pop();
                    if value.ends_with('\r') {
                        value.pop();
                    }
                }
                entries.push((name, value));
            }
            entries
        } else {
            let text = std::fs::read_to_string(path).map_err(read_error)?;
            let map: BTreeMap<String, String> =
                serde_saphyr::from_str(&text).map_err(|e| SecretsError::Format {
                    path: shown.clone(),
                    reason: e.to_string(),
                })?;
            map.into_iter().collect()
        };
        for (name, value) in entries {
            kiln_spec::SecretName::new(name.as_str()).map_err(|reason| SecretsError::Entry {
                path: shown.clone(),
                reason,
            })?;
            if value.is_empty() {
                return Err(SecretsError::Entry {
                    path: shown.clone(),
                    reason: format!("secret `{name}` is empty"),
                });
            }
            secrets.from_file.insert(name, SecretValue(value));
        }
        secrets.file = Some(path.to_owned());
        Ok(secrets)
    }

    /// Secrets given directly (tests, a server resolving them elsewhere); the environment is
    /// not read.
    pub fn from_values(values: impl IntoIterator<Item = (String, String)>) -> Self {
        Secrets {
            from_file: values
                .into_iter()
                .map(|(name, value)| (name, SecretValue(value)))
                .collect(),
            file: None,
            read_env: false,
        }
    }

    /// Secret `name`'s value, or what to do to provide it.
    pub fn get(&self, name: &str) -> Result<SecretValue, String> {
        if let Some(value) = self.from_file.get(name) {
            return Ok(value.clone());
        }
        let var = env_var(name);
        if self.read_env
            && let Some(value) = std::env::var_os(&var)
        {
            return match value.into_string() {
                Ok(value) if !value.is_empty() => Ok(SecretValue(value)),
                Ok(_) => Err(format!(
                    "secret `{name}` is empty (`{var}` is set to nothing)"
                )),
                Err(_) => Err(format!("secret `{name}` is not UTF-8 text (in `{var}`)")),
            };
        }
        let file = match &self.file {
            Some(file) => format!("to {}", file.display()),
            None => "to a file given with `--secrets FILE`".to_owned(),
        };
        Err(format!(
            "secret `{name}` is not set: export `{var}`, or add `{name}: <value>` {file}"
        ))
    }

    /// The problems of every container step in `steps` whose secrets cannot all be
    /// resolved (an executor's preflight).
    pub(crate) fn check(&self, steps: &[&PlannedStep]) -> Vec<String> {
        let mut problems = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for step in steps {
            let StepKind::Container(plan) = &step.kind else {
                continue;
            };
            let step = step.id.as_str();
            for secret in plan.secrets.values() {
                if !seen.insert(secret.name.as_str()) {
                    continue;
                }
                if let Err(problem) = self.get(&secret.name) {
                    problems.push(format!("step `{step}` needs {problem}"));
                }
            }
        }
        problems
    }

    /// Resolves the secrets of one attempt of `step`: values for variables, files in a
    /// private folder.
    pub(crate) fn hand_over_for(
        &self,
        step: &PlannedStep,
        plan: &ContainerPlan,
    ) -> Result<HandedOver, ExecutorError> {
        self.hand_over(plan)
            .map_err(|problem| ExecutorError::new(format!("step `{}`: {problem}", step.id)))
    }

    /// Resolves the secrets of one container plan.
    fn hand_over(&self, plan: &ContainerPlan) -> Result<HandedOver, String> {
        let mut handed = HandedOver::default();
        for (var, secret) in &plan.secrets {
            let value = self.get(&secret.name)?;
            if secret.file {
                let folder = match &handed.folder {
                    Some(folder) => folder.path().to_owned(),
                    None => {
                        use std::os::unix::fs::PermissionsExt;
                        let folder = tempfile::Builder::new()
                            .prefix("kiln-secrets-")
                            .permissions(std::fs::Permissions::from_mode(0o700))
                            .tempdir()
                            .map_err(|e| format!("cannot make a folder for secrets: {e}"))?;
                        let path = folder.path().to_owned();
                        handed.folder = Some(folder);
                        path
                    }
                };
                let path = folder.join(&secret.name);
                write_private(&path, value.expose())
                    .map_err(|e| format!("cannot write secret `{}`: {e}", secret.name))?;
                handed.files.insert(var.clone(), (secret.clone(), path));
            } else {
                handed.env.insert(var.clone(), value.clone());
            }
            handed.redact.push((secret.name.clone(), value));
        }
        Ok(handed)
    }
}

fn write_private(path: &Path, value: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(value.as_bytes())
}

/// One attempt's secrets, resolved. The folder of file secrets is removed when this is
/// dropped, at the end of the attempt.
#[derive(Debug, Default)]
pub(crate) struct HandedOver {
    /// Variable → value.
    pub env: BTreeMap<String, SecretValue>,
    /// Variable → (the secret, the host file holding its value).
    pub files: BTreeMap<String, (SecretRef, PathBuf)>,
    /// Every value to redact, with its secret's name.
    pub redact: Vec<(String, SecretValue)>,
    folder: Option<tempfile::TempDir>,
}

impl HandedOver {
    /// The redactor for this attempt's output, if it has secrets.
    pub fn redactor(&self) -> Option<Redactor> {
        Redactor::new(
            self.redact
                .iter()
                .map(|(name, value)| (name.as_str(), value.expose())),
        )
    }
}

/// Replaces secret values in a stream of output with `[secret:<name>]`, also where a value is
/// split across two reads: the end of each chunk that could still be the start of a value is
/// held back until the next one (or [`Redactor::finish`]).
pub struct Redactor {
    finder: AhoCorasick,
    markers: Vec<Vec<u8>>,
    longest: usize,
    pending: Vec<u8>,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redactor")
            .field("values", &self.markers.len())
            .finish()
    }
}

impl Redactor {
    /// A redactor for `(name, value)` pairs; `None` when there is nothing to redact.
    pub fn new<'a>(secrets: impl IntoIterator<Item = (&'a str, &'a str)>) -> Option<Self> {
        let (markers, values): (Vec<Vec<u8>>, Vec<&str>) = secrets
            .into_iter()
            .filter(|(_, value)| !value.is_empty())
            .map(|(name, value)| (format!("[secret:{name}]").into_bytes(), value))
            .unzip();
        if values.is_empty() {
            return None;
        }
        let longest = values.iter().map(|v| v.len()).max().unwrap_or(0);
        let finder = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(&values)
            .expect("a handful of literal secret values always builds");
        Some(Redactor {
            finder,
            markers,
            longest,
            pending: Vec::new(),
        })
    }

    /// Takes the next chunk of output; returns what can be written now.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<u8> {
        self.pending.extend_from_slice(bytes);
        // Bytes before `safe` cannot be the start of a value that ends after the chunk.
        let safe = self.pending.len().saturating_sub(self.longest - 1);
        let (out, cut) = self.redact_before(safe);
        self.pending.drain(..cut);
        out
    }

    /// The pending output up to `safe` (and through any value that starts before it), with
    /// values replaced; and how many pending bytes that took.
    fn redact_before(&self, safe: usize) -> (Vec<u8>, usize) {
        let mut out = Vec::with_capacity(self.pending.len());
        let mut at = 0;
        for found in self.finder.find_iter(&self.pending) {
            if found.start() >= safe {
                break;
            }
            out.extend_from_slice(&self.pending[at..found.start()]);
            out.extend_from_slice(&self.markers[found.pattern().as_usize()]);
            at = found.end();
        }
        let cut = at.max(safe);
        out.extend_from_slice(&self.pending[at..cut]);
        (out, cut)
    }

    /// The rest of the output, at its end.
    pub fn finish(&mut self) -> Vec<u8> {
        let (out, _) = self.redact_before(self.pending.len());
        self.pending.clear();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redact_in_chunks(secrets: &[(&str, &str)], text: &str, chunk: usize) -> String {
        let mut redactor = Redactor::new(secrets.iter().copied()).unwrap();
        let mut out = Vec::new();
        for piece in text.as_bytes().chunks(chunk) {
            out.extend(redactor.push(piece));
        }
        out.extend(redactor.finish());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn redacts_values_split_across_reads() {
        let secrets = [("token", "hunter2-xyz"), ("short", "ab")];
        let text = "token=hunter2-xyz, again hunter2-xyzhunter2-xyz; ab and a b; hunter2-xy";
        let want = "token=[secret:token], again [secret:token][secret:token]; [secret:short] and a b; hunter2-xy";
        for chunk in 1..=text.len() {
            assert_eq!(
                redact_in_chunks(&secrets, text, chunk),
                want,
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn the_longest_value_wins_where_two_overlap() {
        let secrets = [("a", "pass"), ("b", "password")];
        for chunk in 1..=20 {
            assert_eq!(
                redact_in_chunks(&secrets, "my password, my pass", chunk),
                "my [secret:b], my [secret:a]"
            );
        }
    }

    #[test]
    fn nothing_to_redact_is_no_redactor() {
        assert!(Redactor::new([("empty", "")]).is_none());
    }

    #[test]
    fn names_map_to_variables() {
        assert_eq!(env_var("wandb-api_key"), "KILN_SECRET_WANDB_API_KEY");
    }

    #[test]
    fn loads_a_file_or_a_folder_and_says_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secrets.yaml");
        std::fs::write(&file, "wandb: s3cret\nhf-token: \"abc def\"\n").unwrap();
        let secrets = Secrets::load(Some(&file)).unwrap();
        assert_eq!(secrets.get("wandb").unwrap().expose(), "s3cret");
        assert_eq!(secrets.get("hf-token").unwrap().expose(), "abc def");
        assert!(!format!("{secrets:?}").contains("s3cret"));
        let missing = secrets.get("kiln-test-never-set").unwrap_err();
        assert!(
            missing.contains("export `KILN_SECRET_KILN_TEST_NEVER_SET`"),
            "{missing}"
        );
        assert!(missing.contains("secrets.yaml"), "{missing}");

        let folder = dir.path().join("mounted");
        std::fs::create_dir(&folder).unwrap();
        std::fs::write(folder.join("wandb"), "from-a-file\n").unwrap();
        std::fs::write(folder.join("..data"), "ignored").unwrap();
        let secrets = Secrets::load(Some(&folder)).unwrap();
        assert_eq!(secrets.get("wandb").unwrap().expose(), "from-a-file");

        std::fs::write(&file, "Bad Name: x\n").unwrap();
        let error = Secrets::load(Some(&file)).unwrap_err().to_string();
        assert!(error.contains("invalid secret name `Bad Name`"), "{error}");
        std::fs::write(&file, "wandb: \"\"\n").unwrap();
        let error = Secrets::load(Some(&file)).unwrap_err().to_string();
        assert!(error.contains("secret `wandb` is empty"), "{error}");
        std::fs::write(&file, "- a list\n").unwrap();
        let error = Secrets::load(Some(&file)).unwrap_err().to_string();
        assert!(
            error.contains("is not a map of secret names to values"),
            "{error}"
        );
    }

    #[test]
    fn file_secrets_live_in_a_private_folder_removed_after_the_attempt() {
        use std::os::unix::fs::PermissionsExt;
        let secrets = Secrets::from_values([("hf".to_owned(), "tok".to_owned())]);
        let plan = ContainerPlan {
            image: "x".into(),
            command: vec![],
            args: vec![],
            env: BTreeMap::new(),
            cpu_millis: None,
            cpu_request_millis: None,
            memory_bytes: None,
            memory_request_bytes: None,
            gpu: 0,
            gpu_kind: None,
            secrets: BTreeMap::from([(
                "HF_TOKEN_FILE".to_owned(),
                SecretRef {
                    name: "hf".into(),
                    file: true,
                },
            )]),
        };
        let handed = secrets.hand_over(&plan).unwrap();
        let (_, path) = &handed.files["HF_TOKEN_FILE"];
        assert_eq!(std::fs::read_to_string(path).unwrap(), "tok");
        assert_eq!(
            std::fs::metadata(path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let folder = path.parent().unwrap().to_owned();
        assert_eq!(
            std::fs::metadata(&folder).unwrap().permissions().mode() & 0o077,
            0
        );
        drop(handed);
        assert!(!folder.exists());
    }
}
