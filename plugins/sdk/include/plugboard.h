/*
 * plugboard.h — the Plugboard plugin ABI, version 1, for plugins written in C.
 *
 * A plugin library exports exactly one symbol, `plugboard_plugin_entry`, returning a
 * pointer to a static `pb_plugin_vtable`. The host reads `abi_version` (always the first
 * field, in every version) before anything else and refuses a library built for another
 * version. This header mirrors `plugboard_sdk::abi` field by field.
 *
 * Ownership: buffers the host passes in (hook name, payload, config) are borrowed for the
 * duration of the call. Buffers the plugin writes to a `pb_buffer *` out parameter belong
 * to the plugin until the host returns them through `free_buffer`. Build it with the same
 * allocator you free with (malloc/free in C).
 *
 * Threads: the host may call `call` and `health` on one instance from several threads at
 * once; `create` and `destroy` are never concurrent with anything else on that instance.
 *
 * Build: cc -shared -fPIC -o libname.so name.c -I plugins/sdk/include
 */
#ifndef PLUGBOARD_H
#define PLUGBOARD_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PLUGBOARD_ABI_VERSION 1u
#define PLUGBOARD_ENTRY_SYMBOL "plugboard_plugin_entry"

/* Status codes returned by create, call and health. */
#define PB_STATUS_OK 0            /* success; the buffer holds the reply (may be empty) */
#define PB_STATUS_ERROR 1         /* the hook failed; the buffer holds a UTF-8 message */
#define PB_STATUS_UNKNOWN_HOOK 2  /* this plugin does not handle the hook */
#define PB_STATUS_PANIC 3         /* the plugin hit an internal fault; buffer: message */
#define PB_STATUS_INVALID_INPUT 4 /* payload or config could not be decoded */

/* Return codes of pb_host_api.emit. */
#define PB_EMIT_OK 0
#define PB_EMIT_DENIED 1 /* the manifest does not grant emitting this hook */
#define PB_EMIT_FAILED 2

/* Log levels for pb_host_api.log. */
#define PB_LOG_ERROR 0u
#define PB_LOG_WARN 1u
#define PB_LOG_INFO 2u
#define PB_LOG_DEBUG 3u

/* Bytes owned by the plugin, handed to the host; data may be NULL when len is 0. */
typedef struct pb_buffer {
    uint8_t *data;
    size_t len;
} pb_buffer;

/* What the host offers an instance; valid until the instance is destroyed. Callable from
 * any thread. */
typedef struct pb_host_api {
    uint32_t abi_version;
    void *context; /* opaque: pass it back on every callback */
    void (*log)(void *context, uint32_t level, const uint8_t *message, size_t len);
    int32_t (*emit)(void *context, const uint8_t *hook, size_t hook_len,
                    const uint8_t *payload, size_t payload_len);
} pb_host_api;

/* Every function pointer below is required: a table with a NULL one is refused when the
 * plugin is loaded ("malformed plugin table: null function pointer(s): health"). A plugin
 * with nothing to check returns PB_STATUS_OK from health; one that never writes a buffer
 * still gives a free_buffer (it is never called). */
typedef struct pb_plugin_vtable {
    uint32_t abi_version; /* PLUGBOARD_ABI_VERSION; must stay the first field */
    uint32_t struct_size; /* sizeof(pb_plugin_vtable) */

    /* Creates an instance. config: a UTF-8 JSON object with the plugin's settings (not
     * NUL-terminated). On success store the instance in *instance_out, return
     * PB_STATUS_OK. Otherwise write a message to *error_out and return another status. */
    int32_t (*create)(const pb_host_api *host, const uint8_t *config, size_t config_len,
                      void **instance_out, pb_buffer *error_out);

    /* Calls a hook. The hook name is UTF-8, not NUL-terminated. Writes the reply, or the
     * error message, to *reply_out. */
    int32_t (*call)(void *instance, const uint8_t *hook, size_t hook_len,
                    const uint8_t *payload, size_t payload_len, pb_buffer *reply_out);

    /* PB_STATUS_OK when healthy; otherwise a status and a message in *detail_out. */
    int32_t (*health)(void *instance, pb_buffer *detail_out);

    /* Destroys an instance; it is not used again. */
    void (*destroy)(void *instance);

    /* Frees a buffer this library wrote to an out parameter. */
    void (*free_buffer)(uint8_t *data, size_t len);
} pb_plugin_vtable;

/* The one exported symbol. */
const pb_plugin_vtable *plugboard_plugin_entry(void);

#ifdef __cplusplus
}
#endif

#endif /* PLUGBOARD_H */
