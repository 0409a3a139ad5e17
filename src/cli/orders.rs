//! `cdrvault preserve …`: preservation orders through the lawful-access
//! API, as a legal reviewer (or, to read, an auditor or handler) would.
//! The command line places nothing by itself: an order is registered by
//! one reviewer and approved by another, under their own principals.

use clap::Subcommand;

use super::access::{ServerArgs, connect};
use super::targets::TargetsArgs;
use crate::proto;

#[derive(Subcommand, Debug)]
pub enum PreserveCommand {
    /// Register an order (legal reviewer); another reviewer approves it.
    Add {
        /// The ordering authority (registered).
        #[arg(long)]
        authority: String,
        /// The order's reference at that authority.
        #[arg(long)]
        reference: String,
        /// The subscribers to preserve (msisdn, imsi, imei, sip, ip; never a
        /// cell).
        #[command(flatten)]
        targets: TargetsArgs,
        /// Communications covered, RFC 3339 (e.g. 2026-11-01T00:00:00Z).
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        /// The last day the order holds (YYYY-MM-DD), at most
        /// access.order_max_days after its approval.
        #[arg(long)]
        until: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Approve an order, or its pending new end date (another reviewer).
    Approve {
        order: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Reject an order, or its pending new end date, with the reason.
    Reject {
        order: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Ask for a new end date, to be approved by another reviewer.
    Extend {
        order: String,
        #[arg(long)]
        until: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Lift an order: its key and copies are destroyed now.
    Lift {
        order: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// One order: its state, window, end date and any pending new end (the
    /// kinds of its targets, never their values).
    Show {
        order: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// The orders the caller may see (no target values are shown).
    List {
        #[arg(long)]
        authority: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
}

fn print_order(o: &proto::Order) {
    let pending = if o.pending_ends.is_empty() {
        String::new()
    } else {
        format!(", new end {} asked by {}", o.pending_ends, o.pending_by)
    };
    println!(
        "order {}: {} for {} (ref {}), targets {} ({}), window {} .. {}, until {}{pending}",
        o.id,
        o.status,
        o.authority,
        o.reference,
        o.target_kinds.len(),
        o.target_kinds.join(","),
        o.window_start,
        o.window_end,
        o.ends
    );
}

pub async fn preserve(command: PreserveCommand) -> anyhow::Result<()> {
    let shown = match command {
        PreserveCommand::Add { authority, reference, targets, from, to, until, server } => {
            let targets = targets.texts()?;
            let mut client = connect(&server).await?;
            let request = client.call(proto::RegisterOrderRequest {
                authority,
                reference,
                targets,
                window_start: from,
                window_end: to,
                ends: until,
            })?;
            client.raw().register_order(request).await?.into_inner()
        }
        PreserveCommand::Approve { order, server } => {
            let mut client = connect(&server).await?;
            let request = client.call(proto::DecideOrderRequest { order, approve: true, reason: String::new() })?;
            client.raw().decide_order(request).await?.into_inner()
        }
        PreserveCommand::Reject { order, reason, server } => {
            let mut client = connect(&server).await?;
            let request = client.call(proto::DecideOrderRequest { order, approve: false, reason })?;
            client.raw().decide_order(request).await?.into_inner()
        }
        PreserveCommand::Extend { order, until, server } => {
            let mut client = connect(&server).await?;
            let request = client.call(proto::ExtendOrderRequest { order, ends: until })?;
            client.raw().extend_order(request).await?.into_inner()
        }
        PreserveCommand::Lift { order, reason, server } => {
            let mut client = connect(&server).await?;
            let request = client.call(proto::LiftOrderRequest { order, reason })?;
            client.raw().lift_order(request).await?.into_inner()
        }
        PreserveCommand::Show { order, server } => {
            let mut client = connect(&server).await?;
            let request = client.call(proto::GetOrderRequest { order })?;
            client.raw().get_order(request).await?.into_inner()
        }
        PreserveCommand::List { authority, server } => {
            let mut client = connect(&server).await?;
            let request = client.call(proto::ListOrdersRequest { authority: authority.unwrap_or_default() })?;
            let listed = client.raw().list_orders(request).await?.into_inner();
            for order in &listed.orders {
                print_order(order);
            }
            if listed.orders.is_empty() {
                println!("(no orders)");
            }
            return Ok(());
        }
    };
    print_order(&shown);
    Ok(())
}
