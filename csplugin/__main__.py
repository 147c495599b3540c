from csplugin.app.cli import main

main()
