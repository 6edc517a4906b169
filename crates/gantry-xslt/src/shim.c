/*
 * The few calls of libxslt and libxml2 that Gantry makes, behind a narrow C interface: the
 * Rust side then needs no struct layouts and no C variadic callbacks (which stable Rust
 * cannot define), and every error message is captured as text instead of printed.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libxml/parser.h>
#include <libxml/tree.h>
#include <libxml/xmlerror.h>
#include <libxslt/security.h>
#include <libxslt/transform.h>
#include <libxslt/variables.h>
#include <libxslt/xslt.h>
#include <libxslt/xsltInternals.h>
#include <libxslt/xsltutils.h>

/* Messages of the call running on this thread, appended by the error handlers below. */
typedef struct {
    char *text;
    size_t len;
    size_t cap;
} gx_messages;

static __thread gx_messages *gx_current = NULL;

/* Bounds what one failing call collects: the first messages say what went wrong. */
#define GX_MAX_MESSAGES 4096

static void gx_append(const char *fmt, va_list args) {
    gx_messages *messages = gx_current;
    if (messages == NULL || messages->len >= GX_MAX_MESSAGES) {
        return;
    }
    char line[1024];
    int written = vsnprintf(line, sizeof line, fmt, args);
    if (written <= 0) {
        return;
    }
    size_t add = (size_t)written < sizeof line ? (size_t)written : sizeof line - 1;
    if (messages->len + add + 1 > messages->cap) {
        size_t cap = messages->cap ? messages->cap * 2 : 256;
        while (cap < messages->len + add + 1) {
            cap *= 2;
        }
        char *grown = realloc(messages->text, cap);
        if (grown == NULL) {
            return;
        }
        messages->text = grown;
        messages->cap = cap;
    }
    memcpy(messages->text + messages->len, line, add);
    messages->len += add;
    messages->text[messages->len] = '\0';
}

static void gx_error(void *ctx, const char *fmt, ...) {
    (void)ctx;
    va_list args;
    va_start(args, fmt);
    gx_append(fmt, args);
    va_end(args);
}

static void gx_structured_error(void *ctx, xmlErrorPtr error) {
    (void)ctx;
    if (error == NULL || error->message == NULL) {
        return;
    }
    if (error->line > 0) {
        gx_error(NULL, "line %d: %s", error->line, error->message);
    } else {
        gx_error(NULL, "%s", error->message);
    }
}

/* Forbids every file and network access at run time (document(), xsl:document output). */
static xsltSecurityPrefsPtr gx_run_prefs = NULL;

/* Called once per process, before any other function here. */
int gx_init(int max_depth, int max_vars) {
    xmlInitParser();
    xsltInit();
    xsltMaxDepth = max_depth;
    xsltMaxVars = max_vars;
    /* Both libraries report through these handlers; the messages land in the calling thread's buffer. */
    xsltSetGenericErrorFunc(NULL, gx_error);
    xmlSetGenericErrorFunc(NULL, gx_error);

    /* Compiling may read the stylesheet's own imports and includes from files, nothing from the network. */
    xsltSecurityPrefsPtr compile_prefs = xsltNewSecurityPrefs();
    gx_run_prefs = xsltNewSecurityPrefs();
    if (compile_prefs == NULL || gx_run_prefs == NULL) {
        return -1;
    }
    xsltSetSecurityPrefs(compile_prefs, XSLT_SECPREF_READ_NETWORK, xsltSecurityForbid);
    xsltSetSecurityPrefs(compile_prefs, XSLT_SECPREF_WRITE_NETWORK, xsltSecurityForbid);
    xsltSetSecurityPrefs(compile_prefs, XSLT_SECPREF_WRITE_FILE, xsltSecurityForbid);
    xsltSetSecurityPrefs(compile_prefs, XSLT_SECPREF_CREATE_DIRECTORY, xsltSecurityForbid);
    xsltSetDefaultSecurityPrefs(compile_prefs);
    xsltSetSecurityPrefs(gx_run_prefs, XSLT_SECPREF_READ_FILE, xsltSecurityForbid);
    xsltSetSecurityPrefs(gx_run_prefs, XSLT_SECPREF_READ_NETWORK, xsltSecurityForbid);
    xsltSetSecurityPrefs(gx_run_prefs, XSLT_SECPREF_WRITE_NETWORK, xsltSecurityForbid);
    xsltSetSecurityPrefs(gx_run_prefs, XSLT_SECPREF_WRITE_FILE, xsltSecurityForbid);
    xsltSetSecurityPrefs(gx_run_prefs, XSLT_SECPREF_CREATE_DIRECTORY, xsltSecurityForbid);
    return 0;
}

static void gx_begin(gx_messages *messages) {
    memset(messages, 0, sizeof *messages);
    gx_current = messages;
    /* libxml2 keeps these handlers per thread, so each call sets them on its own. */
    xmlSetGenericErrorFunc(NULL, gx_error);
    xmlSetStructuredErrorFunc(NULL, gx_structured_error);
}

static char *gx_end(gx_messages *messages) {
    gx_current = NULL;
    xmlSetStructuredErrorFunc(NULL, NULL);
    return messages->text;
}

void gx_free_text(char *text) {
    free(text);
}

/*
 * Parses and compiles a stylesheet; `url` (may be NULL) is the base of its imports and
 * includes. On failure returns NULL and sets `*errors` (free with gx_free_text).
 */
xsltStylesheetPtr gx_compile(const char *text, int len, const char *url, char **errors) {
    gx_messages messages;
    gx_begin(&messages);
    xsltStylesheetPtr style = NULL;
    /* No entity substitution nor external DTD: a stylesheet is read as written. */
    xmlDocPtr doc = xmlReadMemory(text, len, url, NULL, XML_PARSE_NONET);
    if (doc != NULL) {
        style = xsltParseStylesheetDoc(doc);
        if (style == NULL) {
            xmlFreeDoc(doc);
        } else if (style->errors > 0) {
            xsltFreeStylesheet(style);
            style = NULL;
        }
    } else if (messages.len == 0) {
        gx_error(NULL, "not well-formed XML");
    }
    if (style == NULL && messages.len == 0) {
        gx_error(NULL, "not an XSLT stylesheet");
    }
    char *captured = gx_end(&messages);
    if (style == NULL) {
        *errors = captured;
    } else {
        free(captured);
        *errors = NULL;
    }
    return style;
}

void gx_free_stylesheet(xsltStylesheetPtr style) {
    xsltFreeStylesheet(style);
}

/* The method of the stylesheet's own xsl:output ("xml", "html", "text"), or NULL when it sets none. */
const char *gx_output_method(xsltStylesheetPtr style) {
    return (const char *)style->method;
}

/* The media-type of the stylesheet's own xsl:output, or NULL. */
const char *gx_output_media_type(xsltStylesheetPtr style) {
    return (const char *)style->mediaType;
}

enum {
    GX_OK = 0,
    GX_NOT_WELL_FORMED = 1,
    GX_TRANSFORM_FAILED = 2,
    GX_OUTPUT_TOO_LARGE = 3,
};

/*
 * Transforms `input` with `style`. `params` holds `param_count` name/value pairs, the values
 * passed as strings (never evaluated as XPath). `op_limit` bounds the XPath operations of the
 * whole run, `max_output` the serialised result's bytes. On GX_OK `*output`/`*output_len` hold
 * the result (free with gx_free_output); otherwise `*errors` may say why (free with gx_free_text).
 */
int gx_transform(xsltStylesheetPtr style, const char *input, int input_len, const char **params, int param_count,
                 unsigned long op_limit, unsigned long max_output, unsigned char **output, int *output_len,
                 char **errors) {
    gx_messages messages;
    gx_begin(&messages);
    int status = GX_OK;
    *output = NULL;
    *output_len = 0;
    xsltTransformContextPtr ctxt = NULL;
    xmlDocPtr result = NULL;

    /* No entity substitution, no DTD loading, no network: the body is data, never a fetch. */
    xmlDocPtr doc = xmlReadMemory(input, input_len, NULL, NULL, XML_PARSE_NONET | XML_PARSE_NOCDATA);
    if (doc == NULL) {
        status = GX_NOT_WELL_FORMED;
        goto done;
    }
    /* Without a DTD no entity can be declared: no expansion ("billion laughs"), no XXE. */
    if (doc->intSubset != NULL || doc->extSubset != NULL) {
        gx_error(NULL, "documents with a DTD (<!DOCTYPE ...>) are refused");
        status = GX_NOT_WELL_FORMED;
        goto done;
    }
    ctxt = xsltNewTransformContext(style, doc);
    if (ctxt == NULL) {
        status = GX_TRANSFORM_FAILED;
        goto done;
    }
    xsltSetCtxtSecurityPrefs(gx_run_prefs, ctxt);
    xsltSetTransformErrorFunc(ctxt, NULL, gx_error);
    ctxt->opLimit = op_limit;

    const char **pairs = calloc((size_t)param_count * 2 + 1, sizeof(char *));
    if (pairs == NULL) {
        status = GX_TRANSFORM_FAILED;
        goto done;
    }
    for (int i = 0; i < param_count * 2; i++) {
        pairs[i] = params[i];
    }
    int quoted = xsltQuoteUserParams(ctxt, pairs);
    free(pairs);
    if (quoted != 0) {
        status = GX_TRANSFORM_FAILED;
        goto done;
    }

    result = xsltApplyStylesheetUser(style, doc, NULL, NULL, NULL, ctxt);
    if (result == NULL || ctxt->state != XSLT_STATE_OK) {
        status = GX_TRANSFORM_FAILED;
        goto done;
    }
    xmlChar *text = NULL;
    int len = 0;
    if (xsltSaveResultToString(&text, &len, result, style) != 0) {
        status = GX_TRANSFORM_FAILED;
        goto done;
    }
    if ((unsigned long)len > max_output) {
        xmlFree(text);
        status = GX_OUTPUT_TOO_LARGE;
        goto done;
    }
    *output = text;
    *output_len = len;

done:
    if (result != NULL) {
        xmlFreeDoc(result);
    }
    if (ctxt != NULL) {
        xsltFreeTransformContext(ctxt);
    }
    if (doc != NULL) {
        xmlFreeDoc(doc);
    }
    char *captured = gx_end(&messages);
    if (status == GX_OK) {
        free(captured);
        *errors = NULL;
    } else {
        *errors = captured;
    }
    return status;
}

void gx_free_output(unsigned char *output) {
    if (output != NULL) {
        xmlFree(output);
    }
}
