//! XSLT 1.0 through the system's libxslt, for Gantry's `xslt` policy.
//!
//! A [`Stylesheet`] is compiled once and then applied by any number of threads at once, as
//! libxslt allows for a compiled stylesheet. Every run forbids file and network access
//! (`document()`, `xsl:document`), bounds its XPath operations, template depth and output,
//! and refuses input with a DTD, so no entity is ever declared or expanded.
//!
//! The tests compare results byte for byte with lxml's libxslt: `tests/fixtures/regenerate.py`
//! (run with lxml installed) rewrites the expected outputs from `tests/fixtures/cases.json`.

use std::ffi::{c_char, c_int, c_uchar, c_ulong, c_void, CStr, CString};
use std::path::Path;
use std::ptr::NonNull;
use std::sync::OnceLock;

mod ffi {
    use super::{c_char, c_int, c_uchar, c_ulong, c_void};

    extern "C" {
        pub fn gx_init(max_depth: c_int, max_vars: c_int) -> c_int;
        pub fn gx_compile(text: *const c_char, len: c_int, url: *const c_char, errors: *mut *mut c_char)
            -> *mut c_void;
        pub fn gx_free_stylesheet(style: *mut c_void);
        pub fn gx_output_method(style: *mut c_void) -> *const c_char;
        pub fn gx_output_media_type(style: *mut c_void) -> *const c_char;
        #[allow(clippy::too_many_arguments)]
        pub fn gx_transform(
            style: *mut c_void,
            input: *const c_char,
            input_len: c_int,
            params: *const *const c_char,
            param_count: c_int,
            op_limit: c_ulong,
            max_output: c_ulong,
            output: *mut *mut c_uchar,
            output_len: *mut c_int,
            errors: *mut *mut c_char,
        ) -> c_int;
        pub fn gx_free_output(output: *mut c_uchar);
        pub fn gx_free_text(text: *mut c_char);
    }
}

/// Deepest template recursion (libxslt's default is 3000): a runaway recursion ends as an
/// error long before it exhausts the thread's stack.
const MAX_TEMPLATE_DEPTH: c_int = 1000;
/// Most variables and parameters alive at once.
const MAX_VARIABLES: c_int = 15_000;

fn init() -> Result<(), Error> {
    static INIT: OnceLock<bool> = OnceLock::new();
    // SAFETY: gx_init only sets libxml2's and libxslt's process-wide settings; OnceLock runs it
    // once, before any other call into the libraries.
    let ok = *INIT.get_or_init(|| unsafe { ffi::gx_init(MAX_TEMPLATE_DEPTH, MAX_VARIABLES) } == 0);
    if ok {
        Ok(())
    } else {
        Err(Error::Failed("libxslt could not be initialised".into()))
    }
}

/// How a stylesheet or a transformation failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// The stylesheet could not be compiled, or the input is not well-formed XML or has a DTD.
    NotWellFormed(String),
    /// The transformation stopped with an error (`xsl:message terminate="yes"`, a limit, …).
    Failed(String),
    /// The result is longer than allowed.
    OutputTooLarge,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::NotWellFormed(reason) => write!(f, "not well-formed XML: {reason}"),
            Error::Failed(reason) => write!(f, "{reason}"),
            Error::OutputTooLarge => write!(f, "the result is larger than allowed"),
        }
    }
}

impl std::error::Error for Error {}

/// Limits of one transformation.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// XPath operations the whole run may perform.
    pub max_operations: u64,
    /// Bytes of serialised result.
    pub max_output_bytes: u64,
}

/// What a stylesheet's `xsl:output` says, as far as a caller labels the result.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Output {
    /// `xml`, `html` or `text` (or a qualified name); `None` when the stylesheet sets none.
    pub method: Option<String>,
    /// Its `media-type`.
    pub media_type: Option<String>,
}

/// A compiled stylesheet.
pub struct Stylesheet {
    style: NonNull<c_void>,
    output: Output,
}

// SAFETY: a compiled libxslt stylesheet is not modified by transformations (each run has its
// own transform context), which is what libxslt documents as making it safe to share between
// threads; the pointer is freed only in Drop, when no other reference exists.
unsafe impl Send for Stylesheet {}
// SAFETY: as above; every method takes `&self` and only reads the stylesheet.
unsafe impl Sync for Stylesheet {}

impl std::fmt::Debug for Stylesheet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stylesheet").field("output", &self.output).finish_non_exhaustive()
    }
}

impl Drop for Stylesheet {
    fn drop(&mut self) {
        // SAFETY: the pointer came from gx_compile and is freed once, here.
        unsafe { ffi::gx_free_stylesheet(self.style.as_ptr()) }
    }
}

/// Takes the messages a shim call returned, freeing them.
fn take_text(text: *mut c_char) -> String {
    if text.is_null() {
        return String::new();
    }
    // SAFETY: the shim returns NUL-terminated text it allocated, or NULL (handled above).
    let owned = unsafe { CStr::from_ptr(text) }.to_string_lossy().trim().to_owned();
    // SAFETY: freed once, with the shim's own allocator.
    unsafe { ffi::gx_free_text(text) };
    owned
}

fn read_text(text: *const c_char) -> Option<String> {
    // SAFETY: the shim returns a NUL-terminated string owned by the stylesheet, or NULL.
    (!text.is_null()).then(|| unsafe { CStr::from_ptr(text) }.to_string_lossy().into_owned())
}

fn length(bytes: &[u8]) -> Result<c_int, Error> {
    c_int::try_from(bytes.len()).map_err(|_| Error::Failed("the document is larger than 2 GiB".into()))
}

impl Stylesheet {
    /// Parses and compiles a stylesheet. `file` names where it was read from: its
    /// `xsl:import`s and `xsl:include`s resolve against it (files only, never the network).
    pub fn compile(text: &[u8], file: Option<&Path>) -> Result<Stylesheet, Error> {
        init()?;
        let url = match file {
            Some(file) => Some(
                CString::new(file.to_string_lossy().into_owned())
                    .map_err(|_| Error::Failed("the file name holds a NUL byte".into()))?,
            ),
            None => None,
        };
        let mut errors: *mut c_char = std::ptr::null_mut();
        // SAFETY: text and url outlive the call; errors receives text the shim allocated.
        let style = unsafe {
            ffi::gx_compile(
                text.as_ptr().cast(),
                length(text)?,
                url.as_ref().map_or(std::ptr::null(), |url| url.as_ptr()),
                &mut errors,
            )
        };
        let messages = take_text(errors);
        let Some(style) = NonNull::new(style) else {
            return Err(Error::NotWellFormed(messages));
        };
        // SAFETY: style is a live compiled stylesheet.
        let output = unsafe {
            Output {
                method: read_text(ffi::gx_output_method(style.as_ptr())),
                media_type: read_text(ffi::gx_output_media_type(style.as_ptr())),
            }
        };
        Ok(Stylesheet { style, output })
    }

    /// What the stylesheet's `xsl:output` says.
    pub fn output(&self) -> &Output {
        &self.output
    }

    /// Transforms `input` (an XML document without a DTD; one with a DTD is refused as not
    /// well-formed) with string parameters, returning the result serialised as `xsl:output` says.
    pub fn transform(&self, input: &[u8], params: &[(&str, &str)], limits: Limits) -> Result<Vec<u8>, Error> {
        let mut owned = Vec::with_capacity(params.len() * 2);
        for (name, value) in params {
            owned.push(CString::new(*name).map_err(|_| Error::Failed("a parameter name holds a NUL byte".into()))?);
            owned.push(CString::new(*value).map_err(|_| Error::Failed("a parameter value holds a NUL byte".into()))?);
        }
        let pointers: Vec<*const c_char> = owned.iter().map(|text| text.as_ptr()).collect();
        let param_count = c_int::try_from(params.len()).map_err(|_| Error::Failed("too many parameters".into()))?;
        let mut output: *mut c_uchar = std::ptr::null_mut();
        let mut output_len: c_int = 0;
        let mut errors: *mut c_char = std::ptr::null_mut();
        // SAFETY: every pointer passed lives until the call returns; the stylesheet is only read;
        // output and errors receive memory the shim allocated, freed below.
        let status = unsafe {
            ffi::gx_transform(
                self.style.as_ptr(),
                input.as_ptr().cast(),
                length(input)?,
                pointers.as_ptr(),
                param_count,
                c_ulong::try_from(limits.max_operations).unwrap_or(c_ulong::MAX),
                c_ulong::try_from(limits.max_output_bytes).unwrap_or(c_ulong::MAX),
                &mut output,
                &mut output_len,
                &mut errors,
            )
        };
        let messages = take_text(errors);
        let result = if output.is_null() {
            Vec::new()
        } else {
            let len = usize::try_from(output_len).unwrap_or(0);
            // SAFETY: on success the shim returns `output_len` bytes at `output`.
            let bytes = unsafe { std::slice::from_raw_parts(output, len) }.to_vec();
            // SAFETY: freed once, with libxml2's allocator that made it.
            unsafe { ffi::gx_free_output(output) };
            bytes
        };
        match status {
            0 => Ok(result),
            1 => Err(Error::NotWellFormed(messages)),
            3 => Err(Error::OutputTooLarge),
            _ if messages.is_empty() => Err(Error::Failed("the transformation failed".into())),
            _ => Err(Error::Failed(messages)),
        }
    }
}

#[cfg(test)]
mod tests;
