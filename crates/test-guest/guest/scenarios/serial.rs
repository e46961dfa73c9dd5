//! Scenarios driven by serial input.

use crate::kit::prelude::*;

pub fn wait(_ctx: &mut Ctx) -> Result<(), Fail> {
    println!("wait: waiting for one byte of serial input");
    let byte = console::read_byte(None).unwrap_or(0);
    println!("wait: got byte {byte:#04x}");
    Ok(())
}

pub fn echo(_ctx: &mut Ctx) -> Result<(), Fail> {
    println!("echo: echoing input lines until 'quit'");
    let mut buf = [0u8; 1024];
    loop {
        let line = console::read_line(&mut buf, None).map_err(|e| Fail::new(format!("{e}")))?;
        if line == "quit" {
            return Ok(());
        }
        println!("echo: {line}");
    }
}
