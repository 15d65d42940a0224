"""`quickft studio [OUTPUTS_DIR]`: a local web page over the run directories.

server.py   the command: the FastAPI app, its routes, the `quickft serve` children it chats through
runs.py     what the pages show, read from the run directories as JSON data
base.py     the child process that answers as the base and the fine-tuned model (chat's --compare-base)
static/     the page: index.html, studio.js, studio.css (plotly.min.js comes from the plotly package)
"""
