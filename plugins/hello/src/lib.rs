//! `hello`: the smallest useful plugin. The `greet` hook answers with a greeting for the
//! name in its payload (UTF-8; empty means "world"); the first word comes from the
//! `greeting` setting.

use plugboard_sdk::{Config, Error, Host, Plugin, export_plugin};

#[derive(Debug)]
pub struct Hello {
    greeting: String,
}

impl Plugin for Hello {
    fn create(host: Host, config: Config) -> Result<Self, Error> {
        let greeting = config.get_str("greeting").unwrap_or("Hello").to_owned();
        host.info(&format!("hello ready, greeting with `{greeting}`"));
        Ok(Self { greeting })
    }

    fn call(&self, hook: &str, payload: &[u8]) -> Result<Vec<u8>, Error> {
        match hook {
            "greet" => {
                let name = std::str::from_utf8(payload)
                    .map_err(|_| Error::invalid_input("greet expects a UTF-8 name"))?
                    .trim();
                let name = if name.is_empty() { "world" } else { name };
                Ok(format!("{}, {name}!", self.greeting).into_bytes())
            }
            other => Err(Error::unknown_hook(other)),
        }
    }
}

export_plugin!(Hello);
