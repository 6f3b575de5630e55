"""``carwatch reprocess``: run the message store through today's feed configuration again."""

import click

from streams.cli.common import (
    UsageFailure,
    feed_config_option,
    feed_configs,
    load_policy,
    parse_aware_datetime,
    policy_option,
    settings_from_env,
    since_option,
)


@click.command()
@since_option(required=True)
@feed_config_option()
@policy_option()
@click.option("--dry-run", is_flag=True, help="Report what would be published; publish nothing.")
def reprocess(
    since: str, feed_config_path: str | None, policy_path: str | None, dry_run: bool
) -> None:
    """Parse every message stored since SINCE again and publish the results that now map.

    Idempotent: results already applied are duplicates, which the worker ignores; rejections
    are reported here, not dead-lettered again.
    """
    import asyncio

    from streams.listeners.inbound import Reprocessed, read_topic, replan
    from streams.listeners.publisher import BrokerUnavailable, LabPublisher

    start = parse_aware_datetime(since, "--since")
    hl7, fhir = feed_configs(feed_config_path, None)
    policy = load_policy(policy_path)
    settings = settings_from_env()
    found = Reprocessed()
    try:
        for stored in read_topic(settings, settings.inbound_topic, start):
            plan = replan(stored, hl7, fhir, policy)
            if plan is None:
                found.skipped["unknown_content_type"] += 1
                continue
            found.add(plan)
    except LookupError as exc:
        raise UsageFailure(str(exc)) from exc

    async def publish() -> None:
        async with LabPublisher(settings=settings) as publisher:
            await publisher.publish(found.plan.__class__(results=found.plan.results))

    if not dry_run and found.plan.results:
        try:
            asyncio.run(publish())
        except BrokerUnavailable as exc:
            raise click.ClickException(str(exc)) from exc
    verb = "would be published" if dry_run else "published"
    click.echo(f"carwatch reprocess: {found.summary().replace('published', verb)}", err=True)
