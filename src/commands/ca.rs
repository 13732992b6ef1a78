//! `stagectl ca`: the certificate of the CA the load balancer hosts keep
//! for their edge proxy (`lb.edge`), printed so that a browser, `curl
//! --cacert` or a CI job can trust the environments' HTTPS: the CA of the
//! topology's `lb.domain` (one per domain, valid for names in it only).
//! Only the certificate: the key is read by stagectl only to sign an
//! environment's certificate.

use anyhow::{bail, Result};

use crate::error::EXIT_OK;
use crate::pipeline::events::Reporter;
use crate::pipeline::{edge::read_ca, open, Ctx, Unreachable};

pub async fn run(ctx: &Ctx) -> Result<u8> {
    let t = &ctx.topology;
    let hosts = open(ctx, &Reporter::quiet(), Unreachable::Report).await?;
    let mut certs: Vec<String> = Vec::new();
    let mut problems = Vec::new();
    for h in t.lb_hosts() {
        match hosts.engine(&h.name) {
            None => problems.push(format!("{}: not reached", h.name)),
            Some(engine) => match read_ca(engine, &t.lb.domain).await {
                Ok(Some(ca)) if !certs.contains(&ca.cert_pem) => certs.push(ca.cert_pem),
                Ok(_) => {}
                Err(e) => problems.push(format!("{e:#}")),
            },
        }
    }
    for p in &problems {
        eprintln!("warning: {p}");
    }
    if certs.is_empty() {
        bail!(
            "no CA for {} on the load balancer hosts of {} yet: the first `up` of an environment with `lb.edge: true` makes it",
            t.lb.domain,
            t.source.display()
        );
    }
    // Two when load balancer hosts got their edges apart: trust both.
    print!("{}", certs.concat());
    Ok(EXIT_OK)
}
