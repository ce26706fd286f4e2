//! `--server URL` and `--token`, shared by the commands that talk to a kiln server.

use kiln_build::registry::{RegistryClient, SERVER_ENV, TOKEN_ENV};

/// Which kiln server, and the token to show it.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// The kiln server (`http://HOST:8600`)
    #[arg(long, value_name = "URL", env = SERVER_ENV)]
    pub server: Option<String>,
    /// The bearer token for the server
    #[arg(long, value_name = "TOKEN", env = TOKEN_ENV, hide_env_values = true)]
    pub token: Option<String>,
}

impl ServerArgs {
    /// A client of the server, if one is named.
    pub fn client(&self) -> anyhow::Result<Option<RegistryClient>> {
        self.server
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(|url| RegistryClient::new(url, self.token.clone()).map_err(anyhow::Error::msg))
            .transpose()
    }

    /// A client of the server, which must be named.
    pub fn required(&self, what: &str) -> anyhow::Result<RegistryClient> {
        self.client()?.ok_or_else(|| {
            anyhow::anyhow!("{what} needs a kiln server: give --server URL or set {SERVER_ENV}")
        })
    }
}
