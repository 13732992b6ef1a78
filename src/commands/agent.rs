//! `stagectl agent ...`: entry points of the agents (see `crate::agent`).

use std::time::Duration;

use anyhow::Result;

use crate::agent::register::{self, RegisterOptions};
use crate::agent::registration::AgentContext;
use crate::agent::template::{self, TemplateOptions};
use crate::cli::AgentCommand;
use crate::consul_http::ConsulClient;
use crate::error::EXIT_OK;

pub async fn run(cmd: AgentCommand) -> Result<u8> {
    match cmd {
        AgentCommand::Register {
            env,
            host,
            advertise,
            consul,
            resync,
            only_labeled,
        } => {
            register::run(RegisterOptions {
                context: AgentContext {
                    env,
                    host,
                    advertise,
                    adopt_unlabeled: !only_labeled,
                },
                consul,
                resync: Duration::from_secs(resync.max(1)),
            })
            .await?;
        }
        AgentCommand::Template {
            env,
            consul,
            nginx_container,
            conf_dir,
            template,
            domain,
            port,
            quiet_ms,
            max_wait_ms,
        } => {
            template::run(TemplateOptions {
                env,
                consul,
                nginx_container,
                conf_dir,
                template,
                domain,
                port,
                quiet: Duration::from_millis(quiet_ms),
                max_wait: Duration::from_millis(max_wait_ms.max(1)),
            })
            .await?;
        }
        AgentCommand::Services { consul } => {
            let client = ConsulClient::new(&consul);
            let report = client.service_report().await?;
            println!("{}", serde_json::to_string(&report)?);
        }
    }
    Ok(EXIT_OK)
}
