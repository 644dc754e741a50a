/*
 * hello-c: the `hello` plugin written in C against plugboard.h. The `greet` hook answers
 * "Hello from C, <name>!" for the UTF-8 name in its payload (empty means "world").
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plugboard.h"

typedef struct hello_instance {
    const pb_host_api *host;
    unsigned long calls;
} hello_instance;

static int32_t write_text(pb_buffer *out, const char *text, size_t len) {
    if (out == NULL) {
        return PB_STATUS_INVALID_INPUT;
    }
    out->data = NULL;
    out->len = 0;
    if (len == 0) {
        return PB_STATUS_OK;
    }
    out->data = malloc(len);
    if (out->data == NULL) {
        return PB_STATUS_PANIC;
    }
    memcpy(out->data, text, len);
    out->len = len;
    return PB_STATUS_OK;
}

static int32_t fail(pb_buffer *out, int32_t status, const char *message) {
    int32_t written = write_text(out, message, strlen(message));
    return written == PB_STATUS_OK ? status : written;
}

static int32_t hello_create(const pb_host_api *host, const uint8_t *config, size_t config_len,
                            void **instance_out, pb_buffer *error_out) {
    (void)config;
    (void)config_len;
    if (instance_out == NULL) {
        return PB_STATUS_INVALID_INPUT;
    }
    if (host != NULL && host->abi_version != PLUGBOARD_ABI_VERSION) {
        return fail(error_out, PB_STATUS_INVALID_INPUT, "host speaks another plugin ABI version");
    }
    hello_instance *instance = calloc(1, sizeof *instance);
    if (instance == NULL) {
        return fail(error_out, PB_STATUS_PANIC, "out of memory");
    }
    instance->host = host;
    if (host != NULL && host->log != NULL) {
        static const char ready[] = "hello-c ready";
        host->log(host->context, PB_LOG_INFO, (const uint8_t *)ready, sizeof ready - 1);
    }
    *instance_out = instance;
    return PB_STATUS_OK;
}

static int32_t hello_call(void *opaque, const uint8_t *hook, size_t hook_len,
                          const uint8_t *payload, size_t payload_len, pb_buffer *reply_out) {
    hello_instance *instance = opaque;
    if (instance == NULL || hook == NULL) {
        return fail(reply_out, PB_STATUS_INVALID_INPUT, "missing instance or hook");
    }
    if (hook_len != 5 || memcmp(hook, "greet", 5) != 0) {
        return fail(reply_out, PB_STATUS_UNKNOWN_HOOK, "unknown hook");
    }
    __atomic_add_fetch(&instance->calls, 1, __ATOMIC_RELAXED);
    const char *name = "world";
    int name_len = 5;
    if (payload != NULL && payload_len > 0) {
        if (payload_len > 256) {
            return fail(reply_out, PB_STATUS_INVALID_INPUT, "name longer than 256 bytes");
        }
        name = (const char *)payload;
        name_len = (int)payload_len;
    }
    char text[320];
    int len = snprintf(text, sizeof text, "Hello from C, %.*s!", name_len, name);
    if (len < 0 || (size_t)len >= sizeof text) {
        return fail(reply_out, PB_STATUS_ERROR, "greeting does not fit");
    }
    return write_text(reply_out, text, (size_t)len);
}

static int32_t hello_health(void *opaque, pb_buffer *detail_out) {
    if (opaque == NULL) {
        return fail(detail_out, PB_STATUS_INVALID_INPUT, "missing instance");
    }
    return write_text(detail_out, "", 0);
}

static void hello_destroy(void *opaque) { free(opaque); }

static void hello_free_buffer(uint8_t *data, size_t len) {
    (void)len;
    free(data);
}

static const pb_plugin_vtable HELLO_VTABLE = {
    .abi_version = PLUGBOARD_ABI_VERSION,
    .struct_size = sizeof(pb_plugin_vtable),
    .create = hello_create,
    .call = hello_call,
    .health = hello_health,
    .destroy = hello_destroy,
    .free_buffer = hello_free_buffer,
};

const pb_plugin_vtable *plugboard_plugin_entry(void) { return &HELLO_VTABLE; }
