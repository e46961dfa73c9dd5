//! The one error of this crate: what was wrong and where.

/// Why a domain definition was refused, and where in the input.
///
/// `path` is an XPath-like location (`/domain/devices/disk[2]/driver/@cache`;
/// an index appears only where an element has same-named siblings), `line`
/// and `column` are 1-based (the column counts characters). Display gives
/// `line 12: /domain/devices/graphics: element not supported by Vireo (graphics)`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {path}: {message}")]
pub struct DomainError {
    /// 1-based line of the element or attribute at fault.
    pub line: u32,
    /// 1-based column (in characters) of the element's `<` or the attribute's name.
    pub column: u32,
    /// Where in the document, e.g. `/domain/devices/disk[2]/target/@bus`.
    pub path: String,
    /// What is wrong, and what to do about it where there is a choice.
    pub message: String,
}

/// A position in the input.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Pos {
    pub line: u32,
    pub column: u32,
}

/// A position with the path of the node found there.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Loc {
    pub pos: Pos,
    pub path: String,
}

impl Loc {
    /// An error about the node at this location.
    pub fn error(&self, message: impl Into<String>) -> DomainError {
        DomainError {
            line: self.pos.line,
            column: self.pos.column,
            path: self.path.clone(),
            message: message.into(),
        }
    }
}

/// Shorthand for this crate's results.
pub(crate) type Result<T> = std::result::Result<T, DomainError>;
