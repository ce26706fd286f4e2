-- The component registry: immutable versions and the tags that move between them.
-- Written for both SQLite and PostgreSQL.
CREATE TABLE component_versions (
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    digest TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size BIGINT NOT NULL,
    world TEXT NOT NULL,
    imports TEXT NOT NULL,
    exports TEXT NOT NULL,
    uploaded_by TEXT NOT NULL,
    uploaded_at TEXT NOT NULL,
    PRIMARY KEY (name, version)
);

CREATE TABLE component_tags (
    name TEXT NOT NULL,
    tag TEXT NOT NULL,
    version TEXT NOT NULL,
    moved_by TEXT NOT NULL,
    moved_at TEXT NOT NULL,
    PRIMARY KEY (name, tag),
    FOREIGN KEY (name, version) REFERENCES component_versions (name, version) ON DELETE CASCADE
);
