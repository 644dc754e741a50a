//! The messages exchanged between the engine and a worker (`plugboard-host`).
//!
//! Every conversation starts with a version check: the worker's first message is
//! [`WorkerMessage::Hello`] and the engine answers with [`EngineMessage::Welcome`] only if
//! the protocol versions match.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Version of the engine⇄worker protocol; both sides compare it before anything else.
pub const PROTOCOL_VERSION: u32 = 1;

/// A message from the engine to a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum EngineMessage {
    /// First message after the worker's Hello: how to confine itself and what to load.
    Welcome {
        protocol: u32,
        plan: ConfinementPlan,
    },
    /// The engine has put the worker into its cgroup; the worker may continue confining.
    Proceed,
    /// Call one hook. `depth` counts the emits that led to this call (0: called by the
    /// host directly); the engine refuses to go deeper than its bound.
    Call {
        id: u64,
        hook: String,
        #[serde(with = "bytes")]
        payload: Vec<u8>,
        depth: u32,
    },
    /// Ask for a health check.
    Health { id: u64 },
    /// Answer to a worker's Emit.
    EmitResult { id: u64, code: i32 },
    /// Shut down gracefully (destroy the instance, exit 0).
    Shutdown,
}

/// How a worker confines itself before it loads the plugin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfinementPlan {
    /// Plugin name (for the hostname and for messages).
    pub plugin: String,
    /// Unprivileged host uid to switch to.
    pub uid: u32,
    /// Unprivileged host gid to switch to.
    pub gid: u32,
    /// Keep the host's network namespace (otherwise an empty one with only `lo`).
    pub network: bool,
    /// Allow `fork`/`execve`.
    pub spawn: bool,
    /// Paths the plugin may read (Landlock).
    pub fs_read: Vec<PathBuf>,
    /// Paths the plugin may write (Landlock).
    pub fs_write: Vec<PathBuf>,
    /// `RLIMIT_NOFILE`.
    pub max_open_files: u64,
    /// `RLIMIT_AS`, a backstop far above the cgroup's memory limit.
    pub address_space_bytes: u64,
    /// Size of the private `/tmp`.
    pub tmpfs_bytes: u64,
    /// The plugin's environment, exactly.
    pub env: Vec<(String, String)>,
    /// The plugin's merged config, a JSON object.
    #[serde(with = "bytes")]
    pub config_json: Vec<u8>,
    /// Mechanism names the host requires (e.g. "seccomp"); the worker aborts if one fails.
    pub require: Vec<String>,
    /// Threads the worker serves requests on (calls in flight at once).
    pub serve_threads: u32,
}

/// A message from a worker to the engine. Workers are untrusted: everything in here is
/// checked before it is used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WorkerMessage {
    /// First message: protocol version and the worker's host pid.
    Hello { protocol: u32, pid: u32 },
    /// Confinement finished (or failed): one report per step, and the host pid of the
    /// process that will run plugin code (pid 1 of the worker's pid namespace).
    Confined {
        steps: Vec<StepReport>,
        sandbox_pid: u32,
    },
    /// Sent with the seccomp user-notification listener fd attached (SCM_RIGHTS).
    SeccompListener,
    /// The plugin library is loaded and its instance created.
    Ready,
    /// Loading or creating the plugin failed.
    LoadFailed { reason: String },
    /// Answer to Call or Health (status = ABI status code, 0 = ok).
    Reply {
        id: u64,
        status: i32,
        #[serde(with = "bytes")]
        body: Vec<u8>,
    },
    /// A log line from the plugin (level = ABI log level).
    Log { level: u32, message: String },
    /// The plugin emits a hook; the engine answers with EmitResult. `depth` is that of
    /// the call during which the plugin emitted (0 outside any call). The worker is
    /// untrusted, so the engine also caps emits in flight per worker.
    Emit {
        id: u64,
        hook: String,
        #[serde(with = "bytes")]
        payload: Vec<u8>,
        depth: u32,
    },
}

/// The outcome of one confinement step, as the worker reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepReport {
    /// Mechanism name, e.g. "seccomp", "landlock", "cgroup".
    pub mechanism: String,
    /// Whether the step took effect.
    pub ok: bool,
    /// What happened (the kernel's reason when it failed).
    pub detail: String,
}

/// `Vec<u8>` fields as one byte string instead of a sequence of `u8`s. In postcard both
/// are a varint length and the raw bytes, so the wire format is the same; this one is a
/// single copy each way instead of a call per byte, and decoding checks the length against
/// the bytes actually present before it allocates.
mod bytes {
    use std::fmt;

    use serde::de::{self, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    #[allow(clippy::ptr_arg)] // `with` hands over the field as it is: `&Vec<u8>`
    pub fn serialize<S: Serializer>(bytes: &Vec<u8>, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        deserializer.deserialize_byte_buf(BytesVisitor)
    }

    struct BytesVisitor;

    impl<'de> Visitor<'de> for BytesVisitor {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a byte string")
        }

        fn visit_bytes<E: de::Error>(self, bytes: &[u8]) -> Result<Vec<u8>, E> {
            Ok(bytes.to_vec())
        }

        fn visit_byte_buf<E: de::Error>(self, bytes: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(bytes)
        }

        /// Formats without byte strings send a sequence of numbers.
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            // The hint comes from the input: trust it only up to a page.
            let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(byte) = seq.next_element()? {
                bytes.push(byte);
            }
            Ok(bytes)
        }
    }
}
