/* global document, window, location, history, confirm, EventSource, FormData, URLSearchParams */
// The chat page. Everything that comes from the model, the user or the network (text, captions,
// URLs, file names) is put in the page with textContent or as an attribute value, never as HTML.
const $ = (id) => document.getElementById(id);
const el = (tag, props = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === 'text') node.textContent = v;
    else if (k === 'class') node.className = v;
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const child of children) if (child) node.append(child);
  return node;
};

const state = {
  conversations: [],
  current: undefined,
  events: undefined,
  rendered: new Set(),
  done: new Set(),
  attachments: [],
};

class ApiError extends Error {}

async function api(path, options = {}) {
  const method = options.method ?? 'GET';
  const headers = { ...(options.headers ?? {}) };
  if (method !== 'GET') headers['x-fromage-csrf'] = '1';
  let res;
  try {
    res = await fetch(path, { ...options, method, headers });
  } catch (err) {
    throw new ApiError(`The server could not be reached (${err.message}). Is fromage still running?`);
  }
  if (res.status === 401) {
    location.assign('/login');
    throw new ApiError('Sign in first.');
  }
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw new ApiError(body.error ?? `The server answered HTTP ${res.status}.`);
  return body;
}

function showAlert(message) {
  const alert = $('alert');
  alert.textContent = message;
  alert.hidden = !message;
}

// ---- conversations ---------------------------------------------------------------------------

function currentFromHash() {
  return new URLSearchParams(location.hash.slice(1)).get('c') ?? undefined;
}

async function loadConversations() {
  const { conversations } = await api('/api/conversations');
  state.conversations = conversations;
  renderConversationList();
  return conversations;
}

function renderConversationList() {
  const list = $('conversations');
  list.replaceChildren(
    ...state.conversations.map((c) =>
      el(
        'li',
        {},
        el('button', {
          type: 'button',
          text: c.title,
          title: c.title,
          'aria-current': String(c.id === state.current),
          'data-id': c.id,
          onclick: () => select(c.id),
        }),
      ),
    ),
  );
  const current = state.conversations.find((c) => c.id === state.current);
  $('title').textContent = current?.title ?? 'FROMAGe';
  document.title = current ? `${current.title} · FROMAGe` : 'FROMAGe';
}

async function newConversation() {
  const { conversation } = await api('/api/conversations', { method: 'POST' });
  await loadConversations();
  await select(conversation.id);
  $('message').focus();
}

async function select(id) {
  state.current = id;
  if (currentFromHash() !== id) history.replaceState(null, '', `#c=${encodeURIComponent(id)}`);
  $('save').href = `/api/conversations/${encodeURIComponent(id)}/export`;
  renderConversationList();
  showAlert('');
  // Nothing of the previous conversation stays on screen while this one loads.
  state.rendered.clear();
  state.done.clear();
  $('transcript').replaceChildren();
  state.events?.close();
  // The stream opens first; the transcript is fetched once it is ready, so nothing falls between.
  const events = new EventSource(`/api/conversations/${encodeURIComponent(id)}/events`);
  state.events = events;
  const mine = (handler) => (event) => {
    if (state.events === events) handler(JSON.parse(event.data));
  };
  events.addEventListener('ready', mine(() => void refresh()));
  events.addEventListener('entry', mine((entry) => addEntry(entry, true)));
  events.addEventListener('progress', mine(({ exchange, progress }) => showPending(exchange, progress)));
  events.addEventListener('done', mine(({ exchange }) => finish(exchange)));
  events.addEventListener('reload', mine(() => void refresh()));
  events.addEventListener('deleted', mine(() => void showFirstConversation()));
}

async function refresh() {
  const id = state.current;
  let data;
  try {
    data = await api(`/api/conversations/${encodeURIComponent(id)}`);
  } catch (err) {
    showAlert(err.message);
    return;
  }
  if (state.current !== id) return;
  state.rendered.clear();
  state.done.clear();
  $('transcript').replaceChildren();
  for (const entry of data.entries) addEntry(entry, false);
  for (const { exchange, progress } of data.pending) showPending(exchange, progress);
  scrollToEnd();
}

// ---- transcript ------------------------------------------------------------------------------

function addEntry(entry, live) {
  if (state.rendered.has(entry.id)) return;
  state.rendered.add(entry.id);
  if (entry.role === 'bot') pendingOf(entry.exchange)?.remove();
  const who = entry.role === 'user' ? 'You' : entry.kind === 'error' ? 'FROMAGe (could not do that)' : entry.kind === 'busy' ? 'FROMAGe (busy)' : 'FROMAGe';
  const item = el('li', { class: `entry ${entry.role} ${entry.kind}`, 'data-entry': String(entry.id), 'data-exchange': String(entry.exchange) }, el('div', { class: 'who', text: who }));
  for (const segment of entry.segments) {
    if (segment.type === 'text') item.append(el('div', { class: 'text', text: segment.text }));
    else item.append(el('ul', { class: 'images' }, ...segment.images.map((image) => el('li', {}, figure(image)))));
  }
  const transcript = $('transcript');
  // Replies go before the pending bubbles of later exchanges.
  const firstPending = transcript.querySelector('.pending');
  transcript.insertBefore(item, entry.role === 'bot' ? firstPending : null);
  if (live && entry.role === 'user' && entry.intent !== 'help' && !state.done.has(entry.exchange)) showPending(entry.exchange, { state: 'queued', position: 0 });
  scrollToEnd();
}

function figure(image) {
  const src = `/api/images/${encodeURIComponent(image.hash)}`;
  const img = el('img', { src, alt: image.alt || image.name });
  if (image.width && image.height) {
    img.width = image.width;
    img.height = image.height;
  }
  const caption = el('figcaption');
  if (image.source) {
    const href = httpUrl(image.source);
    caption.append(href ? el('a', { href, text: image.source, target: '_blank', rel: 'noopener noreferrer' }) : el('span', { text: image.source }));
  } else caption.append(el('span', { text: image.name }));
  if (typeof image.score === 'number') caption.append(el('span', { class: 'score', text: ` · score ${image.score.toFixed(2)}` }));
  const open = el('button', { type: 'button', class: 'thumb', 'aria-label': `Show full size: ${image.alt || image.name}`, onclick: () => view(src, image) }, img);
  return el('figure', {}, open, caption);
}

/** Only http(s) addresses become links; javascript:, data: and the like stay text. */
function httpUrl(value) {
  try {
    const url = new URL(value);
    return url.protocol === 'http:' || url.protocol === 'https:' ? url.href : undefined;
  } catch {
    return undefined;
  }
}

function view(src, image) {
  $('viewer-image').src = src;
  $('viewer-image').alt = image.alt || image.name;
  $('viewer-caption').textContent = [image.alt, image.source].filter(Boolean).join(' · ');
  $('viewer').showModal();
}

function pendingOf(exchange) {
  return $('transcript').querySelector(`.pending[data-exchange="${Number(exchange)}"]`);
}

function showPending(exchange, progress) {
  if (state.done.has(exchange)) return;
  let item = pendingOf(exchange);
  if (!item) {
    item = el('li', { class: 'entry bot pending', 'data-exchange': String(exchange), 'aria-busy': 'true' }, el('div', { class: 'who', text: 'FROMAGe' }), el('div', { class: 'status' }), el('div', { class: 'text' }));
    $('transcript').append(item);
  }
  const status = item.querySelector('.status');
  if (progress.state === 'queued') status.textContent = progress.position > 0 ? `Waiting: position ${progress.position} in the queue${progress.etaSeconds ? `, about ${progress.etaSeconds} s` : ''}.` : 'Waiting for the model…';
  else {
    status.textContent = 'Writing…';
    if (progress.text) item.querySelector('.text').textContent = progress.text;
  }
  scrollToEnd();
}

function finish(exchange) {
  state.done.add(exchange);
  pendingOf(exchange)?.remove();
  void loadConversations();
}

function scrollToEnd() {
  const t = $('transcript');
  t.scrollTop = t.scrollHeight;
}

// ---- composing -------------------------------------------------------------------------------

function addFiles(files) {
  for (const file of files) state.attachments.push({ file, preview: file.type.startsWith('image/') ? URL.createObjectURL(file) : undefined });
  renderAttachments();
}

function renderAttachments() {
  $('attachments').replaceChildren(
    ...state.attachments.map((a, i) =>
      el(
        'li',
        {},
        a.preview ? el('img', { src: a.preview, alt: '' }) : undefined,
        el('span', { text: a.file.name || 'pasted image' }),
        el('button', { type: 'button', text: '×', 'aria-label': `Remove ${a.file.name || 'pasted image'}`, onclick: () => removeAttachment(i) }),
      ),
    ),
  );
}

function removeAttachment(i) {
  const [a] = state.attachments.splice(i, 1);
  if (a?.preview) URL.revokeObjectURL(a.preview);
  renderAttachments();
}

function clearAttachments() {
  for (const a of state.attachments) if (a.preview) URL.revokeObjectURL(a.preview);
  state.attachments = [];
  renderAttachments();
}

let sending = false;

async function send(text, { withImages = true } = {}) {
  if (sending || !state.current) return;
  const images = withImages ? state.attachments : [];
  if (!text.trim() && images.length === 0) {
    showAlert('Type a message or add an image first.');
    return;
  }
  const form = new FormData();
  form.append('text', text);
  for (const a of images) form.append('images', a.file, a.file.name || 'pasted.png');
  sending = true;
  $('send').disabled = true;
  showAlert('');
  try {
    const { entry } = await api(`/api/conversations/${encodeURIComponent(state.current)}/messages`, { method: 'POST', body: form });
    if (entry) addEntry(entry, true);
    if (withImages) clearAttachments();
    $('message').value = '';
  } catch (err) {
    showAlert(err.message);
  } finally {
    sending = false;
    $('send').disabled = false;
  }
}

async function deleteConversation() {
  if (!confirm('Delete this conversation? It leaves the list and the bot forgets it; this cannot be undone.')) return;
  showAlert('');
  const id = state.current;
  // This tab moves on by itself; its own stream need not tell it.
  state.events?.close();
  state.events = undefined;
  try {
    await api(`/api/conversations/${encodeURIComponent(id)}`, { method: 'DELETE' });
    await showFirstConversation();
  } catch (err) {
    await select(id);
    showAlert(err.message);
  }
}

/** After a deletion: the newest conversation left, or a fresh one. */
async function showFirstConversation() {
  state.events?.close();
  state.events = undefined;
  const conversations = await loadConversations();
  if (conversations.length > 0) await select(conversations[0].id);
  else await newConversation();
}

async function undo() {
  showAlert('');
  try {
    await api(`/api/conversations/${encodeURIComponent(state.current)}/undo`, { method: 'POST' });
    await refresh();
  } catch (err) {
    showAlert(err.message);
  }
}

function openSettings() {
  $('settings-form').reset();
  $('settings-dialog').showModal();
}

function applySettings() {
  if ($('settings-dialog').returnValue !== 'apply') return;
  const data = new FormData($('settings-form'));
  const pairs = [...data.entries()].filter(([, v]) => String(v).trim() !== '').map(([k, v]) => `${k}=${String(v).trim()}`);
  void send(['/settings', ...pairs].join(' '), { withImages: false });
}

function wire() {
  $('composer').addEventListener('submit', (event) => {
    event.preventDefault();
    void send($('message').value);
  });
  $('message').addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      void send($('message').value);
    }
  });
  $('pick').addEventListener('click', () => $('file-input').click());
  $('file-input').addEventListener('change', () => {
    addFiles([...$('file-input').files]);
    $('file-input').value = '';
  });
  document.addEventListener('paste', (event) => {
    const files = [...(event.clipboardData?.files ?? [])];
    if (files.length === 0) return;
    event.preventDefault();
    addFiles(files);
  });
  const main = $('main');
  let depth = 0;
  main.addEventListener('dragenter', (event) => {
    if (![...(event.dataTransfer?.types ?? [])].includes('Files')) return;
    depth++;
    $('drop-hint').hidden = false;
  });
  main.addEventListener('dragleave', () => {
    depth = Math.max(0, depth - 1);
    if (depth === 0) $('drop-hint').hidden = true;
  });
  main.addEventListener('dragover', (event) => event.preventDefault());
  main.addEventListener('drop', (event) => {
    event.preventDefault();
    depth = 0;
    $('drop-hint').hidden = true;
    addFiles([...(event.dataTransfer?.files ?? [])]);
  });
  $('retrieve').addEventListener('click', () => {
    const query = $('message').value.trim();
    if (!query) {
      showAlert('Type what to look for in the message box, then press Retrieve.');
      $('message').focus();
      return;
    }
    void send(`/retrieve ${query}`, { withImages: false });
  });
  $('reset').addEventListener('click', () => {
    if (confirm('Forget this conversation? The bot will not remember it, and it cannot be undone.')) void send('/reset', { withImages: false });
  });
  $('undo').addEventListener('click', () => void undo());
  $('delete').addEventListener('click', () => void deleteConversation());
  $('help').addEventListener('click', () => void send('/help', { withImages: false }));
  $('open-settings').addEventListener('click', openSettings);
  $('settings-dialog').addEventListener('close', applySettings);
  $('new-conversation').addEventListener('click', () => void newConversation().catch((err) => showAlert(err.message)));
  window.addEventListener('hashchange', () => {
    const id = currentFromHash();
    if (id && id !== state.current && state.conversations.some((c) => c.id === id)) void select(id);
  });
}

async function main() {
  wire();
  try {
    const conversations = await loadConversations();
    const wanted = currentFromHash();
    if (wanted && conversations.some((c) => c.id === wanted)) await select(wanted);
    else if (conversations.length > 0) await select(conversations[0].id);
    else await newConversation();
  } catch (err) {
    showAlert(err.message);
  }
  document.body.dataset.ready = 'true';
}

void main();
