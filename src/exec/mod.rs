//! Processing: the model adapters. Each provider is one file implementing
//! [`ModelAdapter`]; the build engine only sees the trait.

mod command;
mod mock;

use crate::config::{ModelConfig, Provider};
use crate::manifest::Usage;
use crate::template::CompiledPrompt;
use camino::Utf8Path;

/// What a model returned.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelResponse {
    pub output: Vec<u8>,
    pub usage: Option<Usage>,
}

/// A failed model call, with the text to show the user.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ModelError(pub String);

pub trait ModelAdapter: Send + Sync {
    /// Sends the compiled prompt; `root` is the project root (the working
    /// directory of commands).
    fn call(&self, prompt: &CompiledPrompt, root: &Utf8Path) -> Result<ModelResponse, ModelError>;
}

pub fn adapter_for(model: &ModelConfig) -> Box<dyn ModelAdapter> {
    match model.provider {
        Provider::Mock => Box::new(mock::Mock::new(model)),
        Provider::Command => Box::new(command::Command::new(model)),
    }
}
