//! The server's metadata in SQL, through sqlx's `Any` driver: SQLite (WAL) by default, a
//! file under the state folder; PostgreSQL when several replicas share one. The same queries
//! serve both (`$N` placeholders, `ON CONFLICT`), and the migrations under `migrations/` are
//! written for both.

use std::borrow::Cow;
use std::path::Path;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyPool, Row};

/// The migrations, in order (embedded: the binary needs no files beside it).
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "registry",
        include_str!("../migrations/0001_registry.sql"),
    ),
    (2, "runs", include_str!("../migrations/0002_runs.sql")),
    (
        3,
        "idempotency",
        include_str!("../migrations/0003_idempotency.sql"),
    ),
];

/// Which database a server keeps its metadata in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

/// One version of a component, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRow {
    /// The component's name.
    pub name: String,
    /// The version.
    pub version: String,
    /// `blake3:<hex>`: the digest in the store.
    pub digest: String,
    /// `sha256:<hex>` of the same bytes (what OCI registries name blobs by).
    pub sha256: String,
    /// Its size in bytes.
    pub size: i64,
    /// The world (`kiln-step` or `wasi-command`).
    pub world: String,
    /// Top-level imports, a JSON list.
    pub imports: String,
    /// Top-level exports, a JSON list.
    pub exports: String,
    /// Who uploaded it (the token's name).
    pub uploaded_by: String,
    /// When (RFC 3339, UTC).
    pub uploaded_at: String,
}

impl VersionRow {
    fn from_row(row: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            name: row.try_get("name")?,
            version: row.try_get("version")?,
            digest: row.try_get("digest")?,
            sha256: row.try_get("sha256")?,
            size: row.try_get("size")?,
            world: row.try_get("world")?,
            imports: row.try_get("imports")?,
            exports: row.try_get("exports")?,
            uploaded_by: row.try_get("uploaded_by")?,
            uploaded_at: row.try_get("uploaded_at")?,
        })
    }
}

/// A tag and the version it points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagRow {
    /// The tag (`latest`, `stable`).
    pub tag: String,
    /// The version it names now.
    pub version: String,
    /// Who moved it there.
    pub moved_by: String,
    /// When.
    pub moved_at: String,
}

/// What an insert of a version found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted {
    /// The version is new.
    New,
    /// The version was there already (its row).
    Exists(Box<VersionRow>),
}

const VERSION_COLUMNS: &str =
    "name, version, digest, sha256, size, world, imports, exports, uploaded_by, uploaded_at";

/// The metadata database.
#[derive(Debug, Clone)]
pub struct Db {
    pool: AnyPool,
    backend: Backend,
}

impl Db {
    /// The SQLite database at `path` (made if missing).
    pub async fn sqlite(path: &Path) -> Result<Self, sqlx::Error> {
        let url = format!("sqlite://{}?mode=rwc", path.display());
        Self::connect(&url).await
    }

    /// The database at `url` (`sqlite://...` or `postgres://...`), migrated to this
    /// version's schema.
    pub async fn connect(url: &str) -> Result<Self, sqlx::Error> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(sqlx::Error::Configuration(
                format!("unknown database `{url}`: use sqlite://PATH or postgres://...").into(),
            ));
        };
        let pool = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 4 } else { 8 })
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL: readers never wait for the writer. FULL: a commit is on disk
                        // when it returns. Foreign keys: tags go with their versions.
                        for pragma in [
                            "PRAGMA journal_mode = WAL",
                            "PRAGMA synchronous = FULL",
                            "PRAGMA foreign_keys = ON",
                            "PRAGMA busy_timeout = 10000",
                        ] {
                            sqlx::query(pragma).execute(&mut *conn).await?;
                        }
                    }
                    Ok(())
                })
            })
            .connect(url)
            .await?;
        let migrations = MIGRATIONS
            .iter()
            .map(|&(version, description, sql)| {
                Migration::new(
                    version,
                    Cow::Borrowed(description),
                    MigrationType::Simple,
                    sqlx::SqlStr::from_static(sql),
                    false,
                )
            })
            .collect();
        Migrator::with_migrations(migrations)
            .run(&pool)
            .await
            .map_err(|e| sqlx::Error::Migrate(Box::new(e)))?;
        Ok(Self { pool, backend })
    }

    /// The connection pool.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map(drop)
    }

    /// Closes the pool, waiting for connections in use.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// One version of a component.
    pub async fn version(
        &self,
        name: &str,
        version: &str,
    ) -> Result<Option<VersionRow>, sqlx::Error> {
        let sql = format!(
            "SELECT {VERSION_COLUMNS} FROM component_versions WHERE name = $1 AND version = $2"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(name)
            .bind(version)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(VersionRow::from_row)
            .transpose()
    }

    /// Stores a new version, unless one of that name and version is there (then it is given
    /// back, and nothing changes).
    pub async fn insert_version(&self, row: &VersionRow) -> Result<Inserted, sqlx::Error> {
        let sql = format!(
            "INSERT INTO component_versions ({VERSION_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (name, version) DO NOTHING"
        );
        let done = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&row.name)
            .bind(&row.version)
            .bind(&row.digest)
            .bind(&row.sha256)
            .bind(row.size)
            .bind(&row.world)
            .bind(&row.imports)
            .bind(&row.exports)
            .bind(&row.uploaded_by)
            .bind(&row.uploaded_at)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 1 {
            return Ok(Inserted::New);
        }
        match self.version(&row.name, &row.version).await? {
            Some(existing) => Ok(Inserted::Exists(Box::new(existing))),
            // Deleted between the two statements: the caller may try again.
            None => Err(sqlx::Error::RowNotFound),
        }
    }

    /// Every version of a component, oldest first.
    pub async fn versions(&self, name: &str) -> Result<Vec<VersionRow>, sqlx::Error> {
        let sql = format!(
            "SELECT {VERSION_COLUMNS} FROM component_versions WHERE name = $1 \
             ORDER BY uploaded_at, version"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(name)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(VersionRow::from_row)
            .collect()
    }

    /// Every version of every component, by name, oldest first.
    pub async fn all_versions(&self) -> Result<Vec<VersionRow>, sqlx::Error> {
        let sql = format!(
            "SELECT {VERSION_COLUMNS} FROM component_versions ORDER BY name, uploaded_at, version"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(VersionRow::from_row)
            .collect()
    }

    /// A component's tags, by tag.
    pub async fn tags(&self, name: &str) -> Result<Vec<TagRow>, sqlx::Error> {
        sqlx::query(
            "SELECT tag, version, moved_by, moved_at FROM component_tags WHERE name = $1 \
             ORDER BY tag",
        )
        .bind(name)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| {
            Ok(TagRow {
                tag: row.try_get("tag")?,
                version: row.try_get("version")?,
                moved_by: row.try_get("moved_by")?,
                moved_at: row.try_get("moved_at")?,
            })
        })
        .collect()
    }

    /// The version a tag names.
    pub async fn tag(&self, name: &str, tag: &str) -> Result<Option<String>, sqlx::Error> {
        sqlx::query("SELECT version FROM component_tags WHERE name = $1 AND tag = $2")
            .bind(name)
            .bind(tag)
            .fetch_optional(&self.pool)
            .await?
            .map(|row| row.try_get("version"))
            .transpose()
    }

    /// Points a tag at a version (which must exist), made or moved.
    pub async fn set_tag(
        &self,
        name: &str,
        tag: &str,
        version: &str,
        by: &str,
        at: &str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO component_tags (name, tag, version, moved_by, moved_at) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (name, tag) DO UPDATE SET version = excluded.version, \
             moved_by = excluded.moved_by, moved_at = excluded.moved_at",
        )
        .bind(name)
        .bind(tag)
        .bind(version)
        .bind(by)
        .bind(at)
        .execute(&self.pool)
        .await
        .map(drop)
    }

    /// Deletes a version and the tags on it; whether there was one.
    pub async fn delete_version(&self, name: &str, version: &str) -> Result<bool, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM component_tags WHERE name = $1 AND version = $2")
            .bind(name)
            .bind(version)
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query("DELETE FROM component_versions WHERE name = $1 AND version = $2")
            .bind(name)
            .bind(version)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    /// How many versions there are (for the tests: that a refused upload stored nothing).
    pub async fn version_count(&self) -> Result<i64, sqlx::Error> {
        sqlx::query("SELECT COUNT(*) AS n FROM component_versions")
            .fetch_one(&self.pool)
            .await?
            .try_get("n")
    }
}
