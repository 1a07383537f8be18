"""Encrypted echo bot — the quickstart. Once: `sotto-bot login --homeserver URL --user @echo:SERVER`.
Then: `sotto-bot run clients/examples/echo.py`, invite the bot, and say `!echo hello`."""

from clients import Bot, Context

bot = Bot.from_env()  # store from $SOTTO_BOT_STORE, default ./bot-store


@bot.command("echo", help="Repeat the text back.")
async def echo(ctx: Context, *, text: str) -> None:
    await ctx.reply(text)


if __name__ == "__main__":
    bot.run()
