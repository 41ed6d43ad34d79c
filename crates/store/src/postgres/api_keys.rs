//! API keys in PostgreSQL.

use super::*;
use crate::model::{rate_limit_from_db, rate_limit_to_db};

fn api_key_from_row(r: &tokio_postgres::Row) -> Result<ApiKey, StoreError> {
    let permissions: String = r.get(3);
    Ok(ApiKey {
        id: r.get(0),
        name: r.get(1),
        environment: r.get::<_, String>(2).parse().map_err(corrupt("environment"))?,
        permissions: permissions
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().map_err(corrupt("permission")))
            .collect::<Result<_, _>>()?,
        lookup: r.get(4),
        secret_hash: hash32(r.get(5), "secret hash")?,
        created_at: r.get(6),
        revoked_at: r.get(7),
        rate_limit_per_minute: r.get::<_, Option<i64>>(8).map(rate_limit_from_db).transpose()?,
    })
}

const API_KEY_COLUMNS: &str =
    "id, name, environment, permissions, lookup, secret_hash, created_at, revoked_at, rate_limit_per_minute";

#[async_trait]
impl ApiKeyStore for PostgresStore {
    async fn insert_api_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO api_keys (id, name, environment, permissions, lookup, secret_hash, created_at, revoked_at,
                                   rate_limit_per_minute)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            &[
                &key.id,
                &key.name,
                &key.environment.as_str(),
                &permissions_to_text(&key.permissions),
                &key.lookup,
                &key.secret_hash.as_slice(),
                &key.created_at,
                &key.revoked_at,
                &key.rate_limit_per_minute.map(rate_limit_to_db).transpose()?,
            ],
        )
        .await
        .map(drop)
    }

    async fn api_key_by_lookup(&self, lookup: &str) -> Result<Option<ApiKey>, StoreError> {
        let rows = self.query(&format!("SELECT {API_KEY_COLUMNS} FROM api_keys WHERE lookup = $1"), &[&lookup]).await?;
        rows.first().map(api_key_from_row).transpose()
    }

    async fn list_api_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        let rows = self.query(&format!("SELECT {API_KEY_COLUMNS} FROM api_keys ORDER BY created_at, id"), &[]).await?;
        rows.iter().map(api_key_from_row).collect()
    }

    async fn revoke_api_key(&self, id: &str, at: i64) -> Result<bool, StoreError> {
        let n = self
            .execute("UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1", &[&id, &at])
            .await?;
        Ok(n > 0)
    }

    async fn set_api_key_rate_limit(&self, id: &str, per_minute: Option<u64>) -> Result<bool, StoreError> {
        let value = per_minute.map(rate_limit_to_db).transpose()?;
        let n = self.execute("UPDATE api_keys SET rate_limit_per_minute = $2 WHERE id = $1", &[&id, &value]).await?;
        Ok(n > 0)
    }
}
