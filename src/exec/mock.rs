//! `provider = "mock"`: a deterministic stand-in for a model, for offline
//! builds and tests. Its output is a header naming the model and the
//! compiled prompt's digest, then the last message echoed, so a test can
//! tell exactly what prompt produced it. `latency_ms` simulates a slow model.

use super::{ModelAdapter, ModelError, ModelResponse};
use crate::config::ModelConfig;
use crate::template::CompiledPrompt;
use camino::Utf8Path;

pub struct Mock {
    name: String,
    latency_ms: u64,
}

impl Mock {
    pub fn new(m: &ModelConfig) -> Mock {
        Mock {
            name: m.name.clone(),
            latency_ms: m.settings.latency_ms.unwrap_or(0),
        }
    }
}

/// The mock's answer to `prompt` (public so tests can predict it).
pub fn mock_output(model: &str, prompt: &CompiledPrompt) -> String {
    let last = prompt.messages.last().map_or("", |m| m.content.as_str());
    let mut s = format!(
        "[mock `{model}` | prompt {} | {} message(s)]\n{last}",
        prompt.digest().short(),
        prompt.messages.len()
    );
    if !s.ends_with('\n') {
        s.push('\n');
    }
    s
}

impl ModelAdapter for Mock {
    fn call(&self, prompt: &CompiledPrompt, _root: &Utf8Path) -> Result<ModelResponse, ModelError> {
        // sleep in slices so an interrupted build does not wait it out
        let until = std::time::Instant::now() + std::time::Duration::from_millis(self.latency_ms);
        while let Some(left) = until.checked_duration_since(std::time::Instant::now()) {
            if super::interrupted() {
                return Err(ModelError::Interrupted);
            }
            std::thread::sleep(left.min(std::time::Duration::from_millis(20)));
        }
        Ok(ModelResponse::unnamed(
            mock_output(&self.name, prompt).into_bytes(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::Message;

    #[test]
    fn output_is_deterministic_and_names_the_prompt() {
        let p = CompiledPrompt {
            cache_breaks: Vec::new(),
            messages: vec![Message {
                role: "user".into(),
                content: "Hi".into(),
            }],
        };
        let a = mock_output("m", &p);
        assert_eq!(a, mock_output("m", &p));
        assert_eq!(
            a,
            format!(
                "[mock `m` | prompt {} | 1 message(s)]\nHi\n",
                p.digest().short()
            )
        );
    }
}
