//! API keys in SQLite.

use super::*;
use crate::model::{rate_limit_from_db, rate_limit_to_db};

type ApiKeyRow = (String, Option<String>, String, String, String, Vec<u8>, i64, Option<i64>, Option<i64>);

fn api_key_from_row(row: ApiKeyRow) -> Result<ApiKey, StoreError> {
    let (id, name, environment, permissions, lookup, hash, created_at, revoked_at, rate_limit) = row;
    Ok(ApiKey {
        id,
        name,
        environment: environment.parse().map_err(corrupt("environment"))?,
        permissions: permissions_from_text(&permissions)?,
        lookup,
        secret_hash: hash.try_into().map_err(|_| StoreError::Corrupt("secret hash length".into()))?,
        created_at,
        revoked_at,
        rate_limit_per_minute: rate_limit.map(rate_limit_from_db).transpose()?,
    })
}

const API_KEY_COLUMNS: &str =
    "id, name, environment, permissions, lookup, secret_hash, created_at, revoked_at, rate_limit_per_minute";

fn read_api_key_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ApiKeyRow> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?, r.get(8)?))
}

#[async_trait]
impl ApiKeyStore for SqliteStore {
    async fn insert_api_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        let key = key.clone();
        self.with(move |c| {
            c.execute(
                "INSERT INTO api_keys (id, name, environment, permissions, lookup, secret_hash, created_at, revoked_at,
                                       rate_limit_per_minute)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    key.id,
                    key.name,
                    key.environment.as_str(),
                    permissions_to_text(&key.permissions),
                    key.lookup,
                    key.secret_hash.to_vec(),
                    key.created_at,
                    key.revoked_at,
                    key.rate_limit_per_minute.map(rate_limit_to_db).transpose()?
                ],
            )
            .map_err(map_err)?;
            Ok(())
        })
        .await
    }

    async fn api_key_by_lookup(&self, lookup: &str) -> Result<Option<ApiKey>, StoreError> {
        let lookup = lookup.to_owned();
        self.with(move |c| {
            let row = c
                .prepare_cached(&format!("SELECT {API_KEY_COLUMNS} FROM api_keys WHERE lookup = ?1"))
                .map_err(map_err)?
                .query_row(params![lookup], read_api_key_row)
                .optional()
                .map_err(map_err)?;
            row.map(api_key_from_row).transpose()
        })
        .await
    }

    async fn list_api_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        self.with(|c| {
            let mut stmt = c
                .prepare(&format!("SELECT {API_KEY_COLUMNS} FROM api_keys ORDER BY created_at, id"))
                .map_err(map_err)?;
            let rows = stmt.query_map([], read_api_key_row).map_err(map_err)?;
            rows.map(|r| r.map_err(map_err).and_then(api_key_from_row)).collect()
        })
        .await
    }

    async fn revoke_api_key(&self, id: &str, at: i64) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.with(move |c| {
            let changed = c
                .execute("UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?2) WHERE id = ?1", params![id, at])
                .map_err(map_err)?;
            Ok(changed > 0)
        })
        .await
    }

    async fn set_api_key_rate_limit(&self, id: &str, per_minute: Option<u64>) -> Result<bool, StoreError> {
        let id = id.to_owned();
        let value = per_minute.map(rate_limit_to_db).transpose()?;
        self.with(move |c| {
            let changed = c
                .execute("UPDATE api_keys SET rate_limit_per_minute = ?2 WHERE id = ?1", params![id, value])
                .map_err(map_err)?;
            Ok(changed > 0)
        })
        .await
    }
}
