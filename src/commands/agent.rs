//! `stagectl agent ...`: entry points of the agents (see `crate::agent`).

use std::time::Duration;

use anyhow::Result;

use crate::agent::register::{self, RegisterOptions};
use crate::agent::registration::AgentContext;
use crate::agent::template::{self, TemplateOptions};
use crate::cli::AgentCommand;
use crate::cluster::http::ConsulClient;
use crate::error::EXIT_OK;

pub async fn run(cmd: AgentCommand) -> Result<u8> {
    match cmd {
        AgentCommand::Register {
            env,
            host,
            advertise,
            consul,
            token_file,
            resync,
            only_labeled,
            reserved,
        } => {
            register::run(RegisterOptions {
                context: AgentContext {
                    env,
                    host,
                    advertise,
                    adopt_unlabeled: !only_labeled,
                    reserved: reserved.into_iter().collect(),
                },
                consul,
                token_file,
                resync: Duration::from_secs(resync.max(1)),
            })
            .await?;
        }
        AgentCommand::Template {
            env,
            consul,
            token_file,
            nginx_container,
            conf_dir,
            template,
            domain,
            port,
            advertise,
            quiet_ms,
            max_wait_ms,
            tcp,
        } => {
            template::run(TemplateOptions {
                env,
                consul,
                token_file,
                nginx_container,
                conf_dir,
                template,
                domain,
                port,
                advertise,
                quiet: Duration::from_millis(quiet_ms),
                max_wait: Duration::from_millis(max_wait_ms.max(1)),
                tcp: tcp.into_iter().collect(),
            })
            .await?;
        }
        AgentCommand::Hold => crate::lock::hold()?,
        AgentCommand::Pipe { addr } => match crate::engine::tunnel::pipe(&addr).await? {},
        AgentCommand::Cluster { consul, token_file } => {
            let view = ConsulClient::new(&consul)
                .with_token_file_opt(token_file.as_deref())?
                .cluster_view()
                .await?;
            println!("{}", serde_json::to_string(&view)?);
        }
        AgentCommand::Services { consul, token_file } => {
            let report = ConsulClient::new(&consul)
                .with_token_file_opt(token_file.as_deref())?
                .service_report()
                .await?;
            println!("{}", serde_json::to_string(&report)?);
        }
    }
    Ok(EXIT_OK)
}
