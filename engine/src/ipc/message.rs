//! The messages exchanged between the engine and a worker (`plugboard-host`).
//!
//! Every conversation starts with a version check: the worker's first message is
//! [`WorkerMessage::Hello`] and the engine answers with [`EngineMessage::Welcome`] only if
//! the protocol versions match.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Version of the engine⇄worker protocol; both sides compare it before anything else.
/// 2: batched calls (`EngineMessage::Calls`, `WorkerMessage::Replies`).
/// 3: audit mode in the confinement plan.
/// 4: the worker waits, confined, for `Load` before it loads the library (the engine
///    verifies the library while the worker confines itself).
/// 5: the worker drops log lines past its own rate and says how many (`LogsDropped`).
pub const PROTOCOL_VERSION: u32 = 5;

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
    /// Several calls in one frame (pipelined calls), each with its own id. One serving
    /// thread runs them in order and answers them with [`WorkerMessage::Replies`] (or a
    /// `Reply` for a large answer).
    Calls { calls: Vec<BatchedCall> },
    /// The library in the memfd is complete, sealed and verified: load it and create the
    /// instance. Sent after the worker's `Confined` (and `SeccompListener`).
    Load,
}

/// [`EngineMessage`] decoded without copying: hooks and payloads borrow from the received
/// frame. The same variants in the same order, so the same frames decode to the same
/// messages; the worker's serving threads receive this way.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename = "EngineMessage")]
pub enum EngineMessageRef<'a> {
    Welcome {
        protocol: u32,
        plan: ConfinementPlan,
    },
    Proceed,
    Call {
        id: u64,
        hook: &'a str,
        payload: &'a [u8],
        depth: u32,
    },
    Health {
        id: u64,
    },
    EmitResult {
        id: u64,
        code: i32,
    },
    Shutdown,
    Calls {
        #[serde(borrow)]
        calls: Vec<BatchedCallRef<'a>>,
    },
    Load,
}

/// [`BatchedCall`] borrowing its hook and payload from the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename = "BatchedCall")]
pub struct BatchedCallRef<'a> {
    pub id: u64,
    pub hook: &'a str,
    pub payload: &'a [u8],
    pub depth: u32,
}

/// One call of an [`EngineMessage::Calls`] frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchedCall {
    pub id: u64,
    pub hook: String,
    #[serde(with = "bytes")]
    pub payload: Vec<u8>,
    pub depth: u32,
}

/// One answer of a [`WorkerMessage::Replies`] frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchedReply {
    pub id: u64,
    pub status: i32,
    #[serde(with = "bytes")]
    pub body: Vec<u8>,
}

/// [`EngineMessage::Call`] borrowing its hook and payload: it encodes to exactly the frame
/// of the owned message, without copying hook and payload into one first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallRef<'a> {
    pub id: u64,
    pub hook: &'a str,
    pub payload: &'a [u8],
    pub depth: u32,
}

/// [`EngineMessage::Calls`] borrowing its calls' hooks and payloads: encodes to exactly the
/// frame of the owned message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallsRef<'a> {
    pub calls: &'a [CallRef<'a>],
}

/// [`WorkerMessage::Reply`] borrowing its body: encodes to exactly the frame of the owned
/// message, so a worker sends the plugin's reply from the plugin's own buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyRef<'a> {
    pub id: u64,
    pub status: i32,
    pub body: &'a [u8],
}

/// `EngineMessage`'s variant indices: Welcome, Proceed, Call, Health, EmitResult,
/// Shutdown, Calls.
pub(super) const CALL_VARIANT: u32 = 2;
const CALLS_VARIANT: u32 = 6;
/// `WorkerMessage`'s variant index of Reply (after Hello, Confined, SeccompListener,
/// Ready, LoadFailed).
pub(super) const REPLY_VARIANT: u32 = 5;

/// A byte string, as `#[serde(with = "bytes")]` writes one.
struct Bytes<'a>(&'a [u8]);

impl Serialize for Bytes<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.0)
    }
}

impl Serialize for CallRef<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStructVariant;

        let mut call =
            serializer.serialize_struct_variant("EngineMessage", CALL_VARIANT, "Call", 4)?;
        call.serialize_field("id", &self.id)?;
        call.serialize_field("hook", self.hook)?;
        call.serialize_field("payload", &Bytes(self.payload))?;
        call.serialize_field("depth", &self.depth)?;
        call.end()
    }
}

impl Serialize for ReplyRef<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStructVariant;

        let mut reply =
            serializer.serialize_struct_variant("WorkerMessage", REPLY_VARIANT, "Reply", 3)?;
        reply.serialize_field("id", &self.id)?;
        reply.serialize_field("status", &self.status)?;
        reply.serialize_field("body", &Bytes(self.body))?;
        reply.end()
    }
}

/// One [`CallRef`] written as a [`BatchedCall`].
struct AsBatchedCall<'a>(&'a CallRef<'a>);

impl Serialize for AsBatchedCall<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;

        let mut call = serializer.serialize_struct("BatchedCall", 4)?;
        call.serialize_field("id", &self.0.id)?;
        call.serialize_field("hook", self.0.hook)?;
        call.serialize_field("payload", &Bytes(self.0.payload))?;
        call.serialize_field("depth", &self.0.depth)?;
        call.end()
    }
}

impl Serialize for CallsRef<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeSeq, SerializeStructVariant};

        struct Calls<'a>(&'a [CallRef<'a>]);
        impl Serialize for Calls<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
                for call in self.0 {
                    seq.serialize_element(&AsBatchedCall(call))?;
                }
                seq.end()
            }
        }

        let mut calls =
            serializer.serialize_struct_variant("EngineMessage", CALLS_VARIANT, "Calls", 1)?;
        calls.serialize_field("calls", &Calls(self.calls))?;
        calls.end()
    }
}

/// How a worker confines itself before it loads the plugin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfinementPlan {
    /// Plugin name (for the hostname and for messages).
    pub plugin: String,
    /// The library's file name in the bundle (for messages: the worker loads it from a
    /// descriptor).
    pub library: String,
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
    /// Audit mode (the host's choice for this plugin): the seccomp filter shows the engine
    /// every open and every call a capability would grant, and the engine lets them through
    /// and records them; Landlock is not applied. Calls no capability grants stay denied.
    pub audit: bool,
    /// The seccomp filter for this plan, compiled by the engine (once per policy: see
    /// `seccomp::compiled_for`) and packed by `seccomp::pack_program`; empty: the worker
    /// compiles it from the plan itself.
    #[serde(default)]
    pub seccomp_program: Vec<u64>,
}

impl ConfinementPlan {
    /// The system calls this plan's filter lets through: from its capabilities and mode.
    pub fn syscall_policy(&self) -> crate::sandbox::seccomp::SyscallPolicy {
        use crate::sandbox::seccomp::{FileWatch, SyscallPolicy};
        SyscallPolicy {
            network: self.network,
            spawn: self.spawn,
            files: if self.audit {
                FileWatch::ReadsAndWrites
            } else {
                FileWatch::Writes
            },
        }
    }
}

impl ConfinementPlan {
    /// Switches the plan to audit mode: Landlock is left out (so it cannot be required).
    pub fn enter_audit_mode(&mut self) {
        self.audit = true;
        self.require
            .retain(|mechanism| mechanism != crate::sandbox::Mechanism::Landlock.name());
    }
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
    /// Answers to several calls (of one or more `Calls` frames), each as `Reply` would.
    Replies { replies: Vec<BatchedReply> },
    /// Log lines the plugin wrote that the worker did not send, past its rate
    /// (`worker::WORKER_LOG_LINES_PER_SEC`), since the last `LogsDropped`.
    LogsDropped { lines: u64 },
}

impl WorkerMessage {
    /// The message's name, for errors: never its contents, which a hostile worker sizes.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Hello { .. } => "Hello",
            Self::Confined { .. } => "Confined",
            Self::SeccompListener => "SeccompListener",
            Self::Ready => "Ready",
            Self::LoadFailed { .. } => "LoadFailed",
            Self::Reply { .. } => "Reply",
            Self::Log { .. } => "Log",
            Self::Emit { .. } => "Emit",
            Self::Replies { .. } => "Replies",
            Self::LogsDropped { .. } => "LogsDropped",
        }
    }
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

#[cfg(test)]
mod tests {
    use super::{
        BatchedCall, BatchedCallRef, CallRef, CallsRef, ConfinementPlan, EngineMessage,
        EngineMessageRef, ReplyRef, WorkerMessage,
    };
    use crate::ipc::{IpcError, decode_frame, encode_frame};

    fn plan() -> ConfinementPlan {
        ConfinementPlan {
            plugin: "p".to_owned(),
            library: "libp.so".to_owned(),
            seccomp_program: Vec::new(),
            uid: 1,
            gid: 2,
            network: true,
            spawn: false,
            fs_read: vec!["/a".into()],
            fs_write: vec![],
            max_open_files: 3,
            address_space_bytes: 4,
            tmpfs_bytes: 5,
            env: vec![("K".to_owned(), "V".to_owned())],
            config_json: b"{}".to_vec(),
            require: vec!["seccomp".to_owned()],
            serve_threads: 2,
            audit: false,
        }
    }

    /// The borrowed form of an owned message, field by field.
    fn borrowed(message: &EngineMessage) -> EngineMessageRef<'_> {
        match message {
            EngineMessage::Welcome { protocol, plan } => EngineMessageRef::Welcome {
                protocol: *protocol,
                plan: plan.clone(),
            },
            EngineMessage::Proceed => EngineMessageRef::Proceed,
            EngineMessage::Call {
                id,
                hook,
                payload,
                depth,
            } => EngineMessageRef::Call {
                id: *id,
                hook,
                payload,
                depth: *depth,
            },
            EngineMessage::Health { id } => EngineMessageRef::Health { id: *id },
            EngineMessage::EmitResult { id, code } => EngineMessageRef::EmitResult {
                id: *id,
                code: *code,
            },
            EngineMessage::Shutdown => EngineMessageRef::Shutdown,
            EngineMessage::Load => EngineMessageRef::Load,
            EngineMessage::Calls { calls } => EngineMessageRef::Calls {
                calls: calls
                    .iter()
                    .map(|call| BatchedCallRef {
                        id: call.id,
                        hook: &call.hook,
                        payload: &call.payload,
                        depth: call.depth,
                    })
                    .collect(),
            },
        }
    }

    #[test]
    fn every_engine_message_decodes_borrowed_as_it_does_owned() {
        let call = |id| BatchedCall {
            id,
            hook: format!("hook{id}"),
            payload: vec![u8::try_from(id % 256).unwrap(); usize::try_from(id).unwrap()],
            depth: 1,
        };
        let messages = [
            EngineMessage::Welcome {
                protocol: 2,
                plan: plan(),
            },
            EngineMessage::Proceed,
            EngineMessage::Call {
                id: u64::MAX,
                hook: "on_tick".to_owned(),
                payload: (0..=255).collect(),
                depth: 3,
            },
            EngineMessage::Health { id: 7 },
            EngineMessage::Load,
            EngineMessage::EmitResult { id: 8, code: -3 },
            EngineMessage::Shutdown,
            EngineMessage::Calls {
                calls: (0..5).map(call).collect(),
            },
            EngineMessage::Calls { calls: Vec::new() },
        ];
        for message in &messages {
            let frame = encode_frame(message).unwrap();
            assert_eq!(
                decode_frame::<EngineMessageRef<'_>>(&frame).unwrap(),
                borrowed(message)
            );
        }
        // Bad frames are refused alike.
        let frame = encode_frame(&messages[2]).unwrap();
        for cut in [0, 3, 6, 10, frame.len() - 1] {
            assert!(matches!(
                decode_frame::<EngineMessageRef<'_>>(&frame[..cut]),
                Err(IpcError::Protocol { .. })
            ));
        }
    }

    #[test]
    fn borrowed_calls_encode_like_the_owned_ones() {
        let refs = [
            CallRef {
                id: 1,
                hook: "greet",
                payload: b"world",
                depth: 0,
            },
            CallRef {
                id: u64::MAX,
                hook: "",
                payload: &[0xff; 300],
                depth: 3,
            },
        ];
        for calls in [&refs[..], &refs[..1], &[]] {
            let owned = EngineMessage::Calls {
                calls: calls
                    .iter()
                    .map(|call| BatchedCall {
                        id: call.id,
                        hook: call.hook.to_owned(),
                        payload: call.payload.to_vec(),
                        depth: call.depth,
                    })
                    .collect(),
            };
            assert_eq!(
                encode_frame(&CallsRef { calls }).unwrap(),
                encode_frame(&owned).unwrap()
            );
        }
    }

    #[test]
    fn a_borrowed_call_encodes_like_the_owned_one() {
        for (id, hook, payload, depth) in [
            (1, "greet", &b"world"[..], 0),
            (u64::MAX, "", &[][..], u32::MAX),
            (300, "a.b", &[0xff; 200][..], 4),
        ] {
            let owned = EngineMessage::Call {
                id,
                hook: hook.to_owned(),
                payload: payload.to_vec(),
                depth,
            };
            let borrowed = CallRef {
                id,
                hook,
                payload,
                depth,
            };
            assert_eq!(
                encode_frame(&borrowed).unwrap(),
                encode_frame(&owned).unwrap()
            );
        }
    }

    #[test]
    fn a_borrowed_reply_encodes_as_the_owned_one() {
        let large = vec![0xff; 70_000];
        for (id, status, body) in [
            (1, 0, &b"hello, world"[..]),
            (u64::MAX, i32::MIN, &[][..]),
            (300, -3, &large[..]),
        ] {
            let owned = WorkerMessage::Reply {
                id,
                status,
                body: body.to_vec(),
            };
            let borrowed = ReplyRef { id, status, body };
            let frame = encode_frame(&borrowed).unwrap();
            assert_eq!(frame, encode_frame(&owned).unwrap());
            assert_eq!(decode_frame::<WorkerMessage>(&frame).unwrap(), owned);
        }
    }
}
