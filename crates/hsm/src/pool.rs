//! One logged-in connection to the token and a pool of its sessions.
//!
//! A PKCS#11 session runs one operation at a time, so each operation takes a
//! session of its own from the pool (opening one when none is idle) and
//! gives it back. Logging in is per application and token: the first
//! session (the anchor, never closed while connected) logs in and every
//! later session shares that state.
//!
//! When an operation fails with a code meaning the token or its sessions
//! are gone, the connection is dropped and every caller gets
//! [`HsmError::Unavailable`] until a reconnect (tried at most once a second,
//! by whichever caller comes next) finds the token and logs in again. A
//! reconnect re-initialises the module (C_Finalize, C_Initialize) so that
//! it forgets what it knew of the old token: SoftHSM2, for one, otherwise
//! keeps a token that came back without its objects. Sessions are opened
//! without close-on-drop: a session of an old connection is never closed by
//! handle, since after re-initialisation that handle may name a new session.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;

use crate::{HsmConfig, HsmError, TokenSelector, failed};

/// Idle sessions kept open; more are opened under load and closed after.
const MAX_IDLE: usize = 64;
/// Time between reconnect attempts while the token is away.
const RECONNECT_INTERVAL: Duration = Duration::from_secs(1);

/// Modules loaded by this process. C_Initialize may run once per process and
/// module, so every [`Pool`] on a module shares its context.
static MODULES: Mutex<Vec<Module>> = Mutex::new(Vec::new());

struct Module {
    path: PathBuf,
    context: Pkcs11,
    /// Bumped by every re-initialisation.
    epoch: u64,
}

pub(crate) struct Pool {
    context: Pkcs11,
    config: HsmConfig,
    state: Mutex<State>,
}

impl Drop for Pool {
    fn drop(&mut self) {
        let mut state = self.lock();
        let epoch = state.epoch;
        if let Some(connection) = state.connection.take()
            && module_epoch(&self.config.module) == Some(epoch)
        {
            for session in connection.idle.into_iter().chain([connection.anchor]) {
                let _ = session.close();
            }
        }
    }
}

struct State {
    connection: Option<Connection>,
    last_attempt: Instant,
    /// Bumped by every disconnect: object handles found under an older
    /// generation are not used again.
    generation: u64,
    /// The module's epoch when this connection was made.
    epoch: u64,
    description: String,
}

struct Connection {
    slot: Slot,
    /// Keeps the login alive: PKCS#11 logs out when the last session closes.
    anchor: Session,
    idle: Vec<Session>,
}

impl Pool {
    /// Loads the module, finds the token and logs in.
    pub(crate) fn connect(config: HsmConfig) -> Result<Self, HsmError> {
        let (context, epoch) = module(&config.module)?;
        let (connection, description) = login(&context, &config)?;
        let state =
            State { connection: Some(connection), last_attempt: Instant::now(), generation: 0, epoch, description };
        Ok(Self { context, config, state: Mutex::new(state) })
    }

    pub(crate) fn config(&self) -> &HsmConfig {
        &self.config
    }

    pub(crate) fn describe(&self) -> String {
        self.lock().description.clone()
    }

    /// Runs `f` on a session of its own, with the connection's generation.
    /// A failure meaning the token is gone drops the connection and is
    /// returned as [`HsmError::Unavailable`].
    pub(crate) fn with_session<T>(&self, f: impl FnOnce(&Session, u64) -> Result<T, HsmError>) -> Result<T, HsmError> {
        let (session, generation) = self.checkout()?;
        match f(&session, generation) {
            Err(HsmError::Failed { operation, code, gone: true }) => {
                self.disconnect(generation, &format!("{operation}: {code}"));
                Err(HsmError::Unavailable(format!("{operation} failed: {code}")))
            }
            // A key that should be there and is not: the token may have been
            // swapped or reset under us (SoftHSM2 forgets a token's objects
            // when its directory goes away), so reconnect as for a token
            // that went away.
            Err(missing @ HsmError::KeyMissing(_)) => {
                self.disconnect(generation, &missing.to_string());
                Err(missing)
            }
            result => {
                self.checkin(session, generation);
                result
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn checkout(&self) -> Result<(Session, u64), HsmError> {
        let mut state = self.lock();
        if state.connection.is_none() {
            if state.last_attempt.elapsed() < RECONNECT_INTERVAL {
                return Err(HsmError::Unavailable("reconnecting to the token".into()));
            }
            state.last_attempt = Instant::now();
            state.epoch = reinitialize(&self.config.module, state.epoch).inspect_err(|e| {
                tracing::warn!(error = %e, "PKCS#11 module could not be re-initialised");
            })?;
            match login(&self.context, &self.config) {
                Ok((connection, description)) => {
                    tracing::info!(token = %description, "PKCS#11 token reconnected");
                    state.connection = Some(connection);
                    state.description = description;
                }
                Err(e) => {
                    // At most once a second (RECONNECT_INTERVAL).
                    tracing::warn!(error = %e, "PKCS#11 token still unavailable");
                    return Err(HsmError::Unavailable(e.to_string()));
                }
            }
        }
        let generation = state.generation;
        let Some(connection) = state.connection.as_mut() else {
            return Err(HsmError::Unavailable("not connected".into()));
        };
        if let Some(session) = connection.idle.pop() {
            return Ok((session, generation));
        }
        let slot = connection.slot;
        match self.context.open_rw_session_no_drop(slot) {
            Ok(session) => Ok((session, generation)),
            Err(e) => {
                let error = failed("C_OpenSession")(e);
                if let HsmError::Failed { gone: true, code, .. } = &error {
                    let reason = format!("C_OpenSession: {code}");
                    drop_connection(&mut state, &reason);
                    return Err(HsmError::Unavailable(reason));
                }
                Err(error)
            }
        }
    }

    fn checkin(&self, session: Session, generation: u64) {
        let mut state = self.lock();
        if state.generation != generation {
            return;
        }
        match state.connection.as_mut() {
            Some(connection) if connection.idle.len() < MAX_IDLE => connection.idle.push(session),
            Some(_) => {
                let _ = session.close();
            }
            None => {}
        }
    }

    fn disconnect(&self, generation: u64, reason: &str) {
        let mut state = self.lock();
        if state.generation == generation {
            drop_connection(&mut state, reason);
        }
    }
}

fn drop_connection(state: &mut State, reason: &str) {
    tracing::error!(reason, "PKCS#11 token unavailable; reconnecting at most once a second");
    state.connection = None;
    state.generation = state.generation.wrapping_add(1);
    state.last_attempt = Instant::now();
}

fn modules() -> MutexGuard<'static, Vec<Module>> {
    MODULES.lock().unwrap_or_else(PoisonError::into_inner)
}

fn module_epoch(path: &Path) -> Option<u64> {
    modules().iter().find(|m| m.path == path).map(|m| m.epoch)
}

/// Re-initialises the module unless another pool did since `seen` (its
/// sessions are then already gone); returns the module's epoch.
fn reinitialize(path: &Path, seen: u64) -> Result<u64, HsmError> {
    let mut modules = modules();
    let Some(module) = modules.iter_mut().find(|m| m.path == path) else {
        return Err(HsmError::Unavailable("the module is not loaded".into()));
    };
    if module.epoch == seen {
        let _ = module.context.clone().finalize();
        match module.context.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => return Err(HsmError::Unavailable(format!("C_Initialize: {}", short(&e)))),
        }
        module.epoch = module.epoch.wrapping_add(1);
    }
    Ok(module.epoch)
}

/// The process's context for `path`, loaded and initialised once, and its
/// epoch.
fn module(path: &Path) -> Result<(Pkcs11, u64), HsmError> {
    let mut modules = modules();
    if let Some(module) = modules.iter().find(|m| m.path == path) {
        return Ok((module.context.clone(), module.epoch));
    }
    let load_error = |cause: String| HsmError::Module { path: path.display().to_string(), cause };
    if !path.is_file() {
        return Err(load_error("no such file".into()));
    }
    let context = Pkcs11::new(path).map_err(|e| load_error(e.to_string()))?;
    match context.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(load_error(format!("C_Initialize: {}", short(&e)))),
    }
    modules.push(Module { path: path.to_path_buf(), context: context.clone(), epoch: 0 });
    Ok((context, 0))
}

/// Finds the token, opens the anchor session and logs in.
fn login(context: &Pkcs11, config: &HsmConfig) -> Result<(Connection, String), HsmError> {
    let slots = context.get_slots_with_token().map_err(failed("C_GetSlotList"))?;
    let mut present = Vec::new();
    let mut chosen = None;
    for slot in slots {
        let Ok(info) = context.get_token_info(slot) else { continue };
        let label = info.label().trim_end().to_owned();
        let matches = match &config.token {
            TokenSelector::Label(wanted) => *wanted == label,
            TokenSelector::Slot(id) => slot.id() == *id,
        };
        if matches && chosen.is_none() {
            chosen = Some((slot, format!("token {label:?} in slot {} ({})", slot.id(), info.model().trim_end())));
        }
        present.push(format!("{label:?} in slot {}", slot.id()));
    }
    let Some((slot, description)) = chosen else {
        return Err(HsmError::NoToken {
            wanted: config.token.to_string(),
            module: config.module.display().to_string(),
            present: if present.is_empty() { "none".into() } else { present.join(", ") },
        });
    };
    let anchor = context.open_rw_session_no_drop(slot).map_err(failed("C_OpenSession"))?;
    let pin = AuthPin::from(config.pin.as_str());
    match anchor.login(UserType::User, Some(&pin)) {
        Ok(()) | Err(Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(e) => {
            let reason = match &e {
                Error::Pkcs11(RvError::PinIncorrect, _) => "the PIN is incorrect (CKR_PIN_INCORRECT)".to_owned(),
                Error::Pkcs11(RvError::PinLocked, _) => "the PIN is locked (CKR_PIN_LOCKED)".to_owned(),
                Error::Pkcs11(RvError::PinExpired, _) => "the PIN has expired (CKR_PIN_EXPIRED)".to_owned(),
                Error::Pkcs11(RvError::UserPinNotInitialized, _) => {
                    "the token's user PIN is not initialised (CKR_USER_PIN_NOT_INITIALIZED)".to_owned()
                }
                other => short(other),
            };
            let _ = anchor.close();
            return Err(HsmError::Login { token: description, reason });
        }
    }
    Ok((Connection { slot, anchor, idle: Vec::new() }, description))
}

/// A cryptoki error without its long PKCS#11 prose.
fn short(error: &Error) -> String {
    match error {
        Error::Pkcs11(rv, function) => format!("{function:?}: {rv:?}"),
        other => other.to_string(),
    }
}
