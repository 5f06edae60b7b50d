//! Bring-your-own provider keys, per Lumen API key: a tenant's own upstream key for a provider,
//! stored either encrypted (ChaCha20-Poly1305 under a key derived per record with HKDF-SHA256
//! from the secret `byok_encryption_key` Spin variable, salted with the record's random nonce,
//! bound to its API key and provider as associated data) or
//! as a reference to a Spin variable. Records never hold a plaintext key, views never show one,
//! and nothing here logs.
//!
//! KV: `v1/byok/{key_id}/{provider}` → [`ByokRecord`]; the key's record lists its providers
//! ([`crate::store::ApiKeyRecord::byok`]), so a call reads a provider key only when there is one.

use crate::error::ApiError;
use crate::store::{self as kv, apikeys, ByokKey, Kv, KvError};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// How a provider key is held.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ByokRecord {
    /// Encrypted with ChaCha20-Poly1305 (base64 nonce and ciphertext).
    Encrypted {
        /// 12-byte nonce.
        nonce: String,
        /// Ciphertext with its tag.
        ciphertext: String,
        /// How the record's key was derived from `byok_encryption_key`: `hkdf-sha256` (salted
        /// with the nonce, per record); absent on records written before, whose key is the
        /// unsalted sha256 of the variable (still read, never written).
        #[serde(default, skip_serializing_if = "String::is_empty")]
        kdf: String,
    },
    /// The name of a Spin variable (declared for the provider component) that holds the key.
    Variable {
        /// Variable name.
        name: String,
    },
}

/// The key derivation of records written now.
const KDF: &str = "hkdf-sha256";

/// The record's cipher: HKDF-SHA256 of the master secret, salted with the record's nonce (so
/// every record has its own key), or — for records written before, `kdf` empty — the unsalted
/// sha256 of the master secret.
fn cipher(master: &str, kdf: &str, salt: &[u8]) -> Result<ChaCha20Poly1305, String> {
    let mut k = [0u8; 32];
    match kdf {
        "" => k.copy_from_slice(&Sha256::digest(master.as_bytes())),
        KDF => hkdf::Hkdf::<Sha256>::new(Some(salt), master.as_bytes())
            .expand(b"lumen-byok-v2", &mut k)
            .map_err(|_| "key derivation failed".to_string())?,
        other => return Err(format!("unknown key derivation '{other}'")),
    }
    Ok(ChaCha20Poly1305::new(Key::from_slice(&k)))
}

fn aad(key_id: &str, provider: &str) -> Vec<u8> {
    format!("lumen-byok-v1\0{key_id}\0{provider}").into_bytes()
}

/// Encrypts `secret` for (`key_id`, `provider`) with a fresh 12-byte `nonce`, which also salts
/// the record's key.
pub fn seal(
    master: &str,
    key_id: &str,
    provider: &str,
    secret: &str,
    nonce: [u8; 12],
) -> Result<ByokRecord, String> {
    let ct = cipher(master, KDF, &nonce)?
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: secret.as_bytes(),
                aad: &aad(key_id, provider),
            },
        )
        .map_err(|_| "the provider key could not be encrypted".to_string())?;
    Ok(ByokRecord::Encrypted {
        nonce: B64.encode(nonce),
        ciphertext: B64.encode(ct),
        kdf: KDF.to_string(),
    })
}

/// Decrypts a record for (`key_id`, `provider`); a record moved to another slot, a wrong master
/// key or a tampered ciphertext fails.
pub fn open(
    master: &str,
    key_id: &str,
    provider: &str,
    rec: &ByokRecord,
) -> Result<String, String> {
    let ByokRecord::Encrypted {
        nonce,
        ciphertext,
        kdf,
    } = rec
    else {
        return Err("not an encrypted record".into());
    };
    let nonce = B64.decode(nonce).map_err(|_| "corrupt nonce".to_string())?;
    let ct = B64
        .decode(ciphertext)
        .map_err(|_| "corrupt ciphertext".to_string())?;
    if nonce.len() != 12 {
        return Err("corrupt nonce".into());
    }
    let pt = cipher(master, kdf, &nonce)?
        .decrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: &ct,
                aad: &aad(key_id, provider),
            },
        )
        .map_err(|_| {
            "the provider key cannot be decrypted (was byok_encryption_key changed?)".to_string()
        })?;
    String::from_utf8(pt).map_err(|_| "the provider key is not text".to_string())
}

/// What a `PUT` asks for: an encrypted key or a variable reference.
#[derive(Debug, Clone, PartialEq)]
pub enum ByokAsk {
    /// `{"key": "..."}`.
    Key(String),
    /// `{"variable": "..."}`.
    Variable(String),
}

/// Parses `{"key": "..."}` or `{"variable": "<spin variable>"}` (exactly one).
pub fn parse_put(body: &[u8]) -> Result<ByokAsk, ApiError> {
    let v = crate::wire::openai::parse_json_object(body)?;
    for k in v.keys() {
        if k != "key" && k != "variable" {
            return Err(ApiError::invalid_request(
                format!(
                    "unknown field '{k}'; send {{\"key\": \"...\"}} or {{\"variable\": \"...\"}}"
                ),
                Some(k),
                "unknown_parameter",
            ));
        }
    }
    match (v.get("key"), v.get("variable")) {
        (Some(Value::String(k)), None) if !k.trim().is_empty() => Ok(ByokAsk::Key(k.trim().to_string())),
        (None, Some(Value::String(n))) if crate::domain::catalog::is_variable_name(n) => Ok(ByokAsk::Variable(n.clone())),
        (None, Some(_)) => Err(ApiError::invalid_request("'variable' must be a Spin variable name (lowercase letters, digits and '_', starting with a letter)", Some("variable"), "invalid_value")),
        (Some(_), None) => Err(ApiError::invalid_request("'key' must be a non-empty string", Some("key"), "invalid_value")),
        _ => Err(ApiError::invalid_request("send exactly one of 'key' or 'variable'", Some("key"), "invalid_value")),
    }
}

/// The public view of a record: never the key.
pub fn view(provider: &str, rec: &ByokRecord) -> Value {
    match rec {
        ByokRecord::Encrypted { .. } => {
            serde_json::json!({"provider": provider, "kind": "encrypted"})
        }
        ByokRecord::Variable { name } => {
            serde_json::json!({"provider": provider, "kind": "variable", "variable": name})
        }
    }
}

/// Stores a record and lists its provider on the key's record.
pub fn put(store: &dyn Kv, key_id: &str, provider: &str, rec: &ByokRecord) -> Result<(), ApiError> {
    kv::store(store, &ByokKey { key_id, provider }, rec).map_err(kv_error)?;
    apikeys::update(store, key_id, |k| {
        if !k.byok.iter().any(|p| p == provider) {
            k.byok.push(provider.to_string());
            k.byok.sort();
        }
    })?;
    Ok(())
}

/// Removes a record; false when there was none.
pub fn remove(store: &dyn Kv, key_id: &str, provider: &str) -> Result<bool, ApiError> {
    let had = kv::load(store, &ByokKey { key_id, provider })
        .map_err(kv_error)?
        .is_some();
    apikeys::update(store, key_id, |k| k.byok.retain(|p| p != provider))?;
    kv::remove(store, &ByokKey { key_id, provider }).map_err(kv_error)?;
    Ok(had)
}

/// Removes every record of a key (when the key is revoked).
pub fn remove_all(store: &dyn Kv, key_id: &str, providers: &[String]) -> Result<(), KvError> {
    for provider in providers {
        kv::remove(store, &ByokKey { key_id, provider })?;
    }
    Ok(())
}

/// The key's records, by provider (the providers its record lists), in one round trip.
pub fn list(
    store: &dyn Kv,
    key_id: &str,
    providers: &[String],
) -> Result<Vec<(String, ByokRecord)>, KvError> {
    let keys: Vec<ByokKey> = providers
        .iter()
        .map(|provider| ByokKey { key_id, provider })
        .collect();
    Ok(providers
        .iter()
        .cloned()
        .zip(kv::load_many(store, &keys)?)
        .filter_map(|(p, r)| r.map(|r| (p, r)))
        .collect())
}

fn kv_error(e: KvError) -> ApiError {
    let mut err = ApiError::internal(format!("the key store is unavailable ({})", e.0));
    err.status = 503;
    err.retryable = true;
    err
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemKv;

    #[test]
    fn sealed_keys_open_only_in_their_slot_with_the_master_key() {
        let rec = seal("master", "key_a", "openai", "sk-tenant", [7; 12]).unwrap();
        let text = serde_json::to_string(&rec).unwrap();
        assert!(!text.contains("sk-tenant"), "{text}");
        assert_eq!(
            open("master", "key_a", "openai", &rec).unwrap(),
            "sk-tenant"
        );
        assert!(open("other", "key_a", "openai", &rec).is_err());
        assert!(
            open("master", "key_b", "openai", &rec).is_err(),
            "bound to its API key"
        );
        assert!(
            open("master", "key_a", "anthropic", &rec).is_err(),
            "bound to its provider"
        );
    }

    #[test]
    fn every_record_has_its_own_salted_key_and_old_records_still_open() {
        // D14: the key was the unsalted sha256 of the variable, one key for every record.
        let a = seal("master-secret-16ch", "k", "openai", "sk-same", [1; 12]).unwrap();
        let b = seal("master-secret-16ch", "k", "openai", "sk-same", [2; 12]).unwrap();
        let (ByokRecord::Encrypted { kdf, .. }, ByokRecord::Encrypted { .. }) = (&a, &b) else {
            panic!("sealed records are encrypted")
        };
        assert_eq!(kdf, "hkdf-sha256");
        // A record's nonce swapped for another's (its salt, so its key) does not open.
        let (ByokRecord::Encrypted { nonce: na, .. }, ByokRecord::Encrypted { ciphertext: cb, .. }) =
            (&a, &b)
        else {
            unreachable!()
        };
        let mixed = ByokRecord::Encrypted {
            nonce: na.clone(),
            ciphertext: cb.clone(),
            kdf: "hkdf-sha256".into(),
        };
        assert!(open("master-secret-16ch", "k", "openai", &mixed).is_err());
        // A record written before (key = sha256 of the variable, no kdf field) still opens.
        let legacy_key = Sha256::digest(b"master-secret-16ch");
        let ct = ChaCha20Poly1305::new(Key::from_slice(&legacy_key))
            .encrypt(
                Nonce::from_slice(&[3; 12]),
                Payload {
                    msg: b"sk-old",
                    aad: &aad("k", "openai"),
                },
            )
            .unwrap();
        let old: ByokRecord = serde_json::from_value(serde_json::json!({
            "kind": "encrypted", "nonce": B64.encode([3u8; 12]), "ciphertext": B64.encode(ct)
        }))
        .unwrap();
        assert_eq!(
            open("master-secret-16ch", "k", "openai", &old).unwrap(),
            "sk-old"
        );
        // An unknown derivation is refused by name.
        let odd = ByokRecord::Encrypted {
            nonce: B64.encode([3u8; 12]),
            ciphertext: B64.encode([0u8; 20]),
            kdf: "rot13".into(),
        };
        assert!(open("m", "k", "openai", &odd)
            .unwrap_err()
            .contains("rot13"));
    }

    #[test]
    fn put_list_remove_and_views() {
        let store = MemKv::default();
        let (key, _) = apikeys::create(
            &store,
            apikeys::parse_create(br#"{"name":"a"}"#).unwrap(),
            &[1; 32],
            &[1; 8],
            1,
        )
        .unwrap();
        let providers = |s: &MemKv| apikeys::get(s, &key.id).unwrap().unwrap().byok;
        put(
            &store,
            &key.id,
            "openai",
            &seal("m", &key.id, "openai", "sk", [1; 12]).unwrap(),
        )
        .unwrap();
        put(
            &store,
            &key.id,
            "vllm",
            &ByokRecord::Variable {
                name: "tenant_vllm_key".into(),
            },
        )
        .unwrap();
        assert_eq!(providers(&store), ["openai", "vllm"]);
        let l = list(&store, &key.id, &providers(&store)).unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(
            view(&l[0].0, &l[0].1),
            serde_json::json!({"provider": "openai", "kind": "encrypted"})
        );
        assert!(remove(&store, &key.id, "openai").unwrap());
        assert!(!remove(&store, &key.id, "openai").unwrap());
        assert_eq!(providers(&store), ["vllm"]);
        assert_eq!(list(&store, &key.id, &providers(&store)).unwrap().len(), 1);
        assert_eq!(
            parse_put(br#"{"key":" sk-1 "}"#).unwrap(),
            ByokAsk::Key("sk-1".into())
        );
        assert_eq!(
            parse_put(br#"{"variable":"my_key"}"#).unwrap(),
            ByokAsk::Variable("my_key".into())
        );
        assert_eq!(
            parse_put(br#"{"variable":"Bad-Name"}"#)
                .unwrap_err()
                .param
                .as_deref(),
            Some("variable")
        );
        assert_eq!(
            parse_put(br#"{"key":"a","variable":"b"}"#)
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            parse_put(br#"{"token":"a"}"#).unwrap_err().param.as_deref(),
            Some("token")
        );
    }
}
