/**
 * The `/fromage` command: its definition (what `fromage discord register` uploads) and how an
 * invocation becomes an intent for the service.
 */
import {
  ApplicationIntegrationType,
  InteractionContextType,
  PermissionFlagsBits,
  SlashCommandBuilder,
  type APIInteractionGuildMember,
  type ChatInputCommandInteraction,
  type GuildMember,
  type RESTPostAPIChatInputApplicationCommandsJSONBody,
} from 'discord.js';
import type { ConversationSettings, Intent } from '../../src/conversation/types.ts';
import type { AttachmentInfo } from './images.ts';

export const COMMAND_NAME = 'fromage';

/** Bounds of the settings options; the service validates again. */
export const SETTING_BOUNDS = {
  ret_scale: { min: 0, max: 5 },
  max_images: { min: 1, max: 4 },
  words: { min: 1, max: 128 },
  temperature: { min: 0, max: 2 },
} as const;

export function fromageCommand(): RESTPostAPIChatInputApplicationCommandsJSONBody {
  const b = SETTING_BOUNDS;
  return new SlashCommandBuilder()
    .setName(COMMAND_NAME)
    .setDescription('Talk with FROMAGe: images in, text and retrieved images out')
    .setContexts(InteractionContextType.Guild, InteractionContextType.BotDM)
    .setIntegrationTypes(ApplicationIntegrationType.GuildInstall)
    .addSubcommand((s) =>
      s
        .setName('retrieve')
        .setDescription('Find images matching a description')
        .addStringOption((o) => o.setName('query').setDescription('What to look for').setRequired(true).setMaxLength(1000))
        .addIntegerOption((o) => o.setName('count').setDescription('How many images (1-4)').setMinValue(1).setMaxValue(4)),
    )
    .addSubcommand((s) =>
      s
        .setName('ask')
        .setDescription('Ask something, optionally about an image')
        .addStringOption((o) => o.setName('prompt').setDescription('Your message').setRequired(true).setMaxLength(2000))
        .addAttachmentOption((o) => o.setName('image').setDescription('An image to talk about')),
    )
    .addSubcommand((s) => s.setName('reset').setDescription('Forget this conversation (channel, thread or DM)'))
    .addSubcommand((s) =>
      s
        .setName('settings')
        .setDescription('Show or change generation settings for this conversation')
        .addNumberOption((o) =>
          o.setName('ret_scale').setDescription('How eagerly it retrieves images (1 = default)').setMinValue(b.ret_scale.min).setMaxValue(b.ret_scale.max),
        )
        .addIntegerOption((o) =>
          o.setName('max_images').setDescription('Images shown per retrieval').setMinValue(b.max_images.min).setMaxValue(b.max_images.max),
        )
        .addIntegerOption((o) => o.setName('words').setDescription('Length of answers in tokens').setMinValue(b.words.min).setMaxValue(b.words.max))
        .addNumberOption((o) =>
          o.setName('temperature').setDescription('0 = deterministic; higher = more varied').setMinValue(b.temperature.min).setMaxValue(b.temperature.max),
        )
        .addBooleanOption((o) => o.setName('reset').setDescription('Restore the default settings')),
    )
    .addSubcommand((s) => s.setName('help').setDescription('How to use the bot'))
    .toJSON();
}

export interface ParsedCommand {
  readonly intent: Intent;
  readonly text: string;
  readonly attachment?: AttachmentInfo;
  /** Whether the answer is for the invoking user only. */
  readonly ephemeral: boolean;
}

/*
 * discord.js checks an option's declared type, not its value: a payload with a string option
 * holding a number reached the service as a message whose text was not a string. Discord itself
 * sends matching values; these keep a malformed one from becoming an internal error.
 */
function textOption(value: unknown): string {
  return typeof value === 'string' ? value : value === null || value === undefined ? '' : String(value);
}

function integerOption(value: unknown): number | undefined {
  return typeof value === 'number' && Number.isInteger(value) ? value : undefined;
}

/** Null for a command this bot does not know (an old registration, another app's name). */
export function parseFromageCommand(interaction: ChatInputCommandInteraction): ParsedCommand | null {
  if (interaction.commandName !== COMMAND_NAME) return null;
  const o = interaction.options;
  switch (o.getSubcommand(false)) {
    case 'retrieve': {
      const query = textOption(o.getString('query', true));
      const count = integerOption(o.getInteger('count'));
      return { intent: { kind: 'retrieve', query, count }, text: query, ephemeral: false };
    }
    case 'ask': {
      const a = o.getAttachment('image');
      const attachment = a ? { name: a.name, url: a.url, contentType: a.contentType, size: a.size } : undefined;
      return { intent: { kind: 'chat' }, text: textOption(o.getString('prompt', true)), attachment, ephemeral: false };
    }
    case 'reset':
      return { intent: { kind: 'reset' }, text: '', ephemeral: false };
    case 'settings':
      return {
        intent: { kind: 'settings', changes: settingsChanges(interaction), ...(o.getBoolean('reset') ? { reset: true } : {}) },
        text: '',
        ephemeral: false,
      };
    case 'help':
      return { intent: { kind: 'help' }, text: '', ephemeral: true };
    default:
      return null;
  }
}

function settingsChanges(interaction: ChatInputCommandInteraction): Partial<ConversationSettings> {
  const o = interaction.options;
  const changes: { -readonly [K in keyof ConversationSettings]?: ConversationSettings[K] } = {};
  const retScale = o.getNumber('ret_scale');
  const maxImages = o.getInteger('max_images');
  const words = o.getInteger('words');
  const temperature = o.getNumber('temperature');
  if (retScale !== null) changes.retScaleFactor = retScale;
  if (maxImages !== null) changes.maxImages = maxImages;
  if (words !== null) changes.maxWords = words;
  if (temperature !== null) changes.temperature = temperature;
  return changes;
}

/**
 * Changing settings affects everyone in the conversation, so in a guild it takes Manage Server
 * or the configured role (by id or by name). In a DM the conversation is the user's own.
 */
export function mayChangeSettings(interaction: ChatInputCommandInteraction, settingsRole: string | undefined): boolean {
  if (!interaction.inGuild()) return true;
  if (interaction.memberPermissions?.has(PermissionFlagsBits.ManageGuild)) return true;
  if (!settingsRole) return false;
  const wanted = settingsRole.toLowerCase();
  return memberRoleIds(interaction.member).some((id) => {
    if (id === settingsRole) return true;
    const name = interaction.guild?.roles.cache.get(id)?.name;
    return name !== undefined && name.toLowerCase() === wanted;
  });
}

export function memberRoleIds(member: GuildMember | APIInteractionGuildMember | null): string[] {
  if (!member) return [];
  return Array.isArray(member.roles) ? [...member.roles] : [...member.roles.cache.keys()];
}
